"""dlib alignment: the eye transform, loading every kind of file, and real faces from the
shared AAF sample (detection rate and eye error against its 49 keypoints)."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adpf.data.align import (EYE_POSITIONS, AlignmentError, align_batch, align_face, detect_landmarks,
                             eye_alignment_matrix, eye_centres, load_image, measure_alignment,
                             normalized_eye_error, read_keypoints_49, square_resize, warp_to_crop)

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
        left, right = eye_centres(detect_landmarks(face.image)[0])
        for got, (fx, fy) in zip((left, right), EYE_POSITIONS):
            assert np.linalg.norm(got - [fx * 128, fy * 128]) < 4, (i, got)


@needs_aaf
def test_huge_grayscale_and_several_faces(tmp_path):
    rgb = load_image(_aaf(3))
    small = detect_landmarks(rgb)[0]
    huge = np.array(Image.fromarray(rgb).resize((rgb.shape[1] * 6, rgb.shape[0] * 6), Image.BILINEAR))
    big = detect_landmarks(huge)[0]  # detected on a shrunk copy, landmarks in full-size pixels
    iod = np.linalg.norm(np.subtract(*eye_centres(small)))
    assert np.linalg.norm(np.subtract(eye_centres(big), np.multiply(eye_centres(small), 6)), axis=1).max() < 0.15 * 6 * iod
    gray = align_face(_save(Image.fromarray(rgb).convert("L"), tmp_path / "gray.jpg"))
    assert gray.image.shape == (128, 128, 3)
    other = np.array(Image.fromarray(load_image(_aaf(100))).resize((rgb.shape[1] // 2, rgb.shape[0] // 2)))
    pair = np.zeros((rgb.shape[0], rgb.shape[1] + other.shape[1], 3), np.uint8)
    pair[:, :rgb.shape[1]] = rgb
    pair[:other.shape[0], rgb.shape[1]:] = other
    landmarks, faces = detect_landmarks(pair)
    assert faces == 2 and (landmarks[:, 0] < rgb.shape[1]).all(), "the larger face is taken"


@needs_aaf
def test_detection_rate_and_eye_error_on_the_aaf_sample():
    """Every 8th photo of the sample (40); on all 320 dlib finds 316 faces with a median eye
    error of 0.026 inter-ocular distances (data_scripts/aaf.py --measure)."""
    images = sorted((AAF / "images").glob("*.jpg"))[::8]
    m = measure_alignment(images, [AAF / "keypoints" / f"{p.stem}.txt" for p in images])
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
    assert normalized_eye_error(landmarks, ref) == pytest.approx(0.05)


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
