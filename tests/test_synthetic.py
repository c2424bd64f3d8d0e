"""The synthetic aging faces: determinism, age only inside the masks, decoys blind to age."""
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adpf.data.aging import REGION_AGES, REGION_NAMES, line_weights, region_strength
from adpf.data.render import _box_of, _Canvas, _ellipse, _warp_masks, image_frames, make_grid
from adpf.data.synthetic import SyntheticFaceSpec, iter_synthetic_faces, make_synthetic_faces

_LINES = {"crows_feet": 5, "under_eye": 3, "forehead": 5, "nasolabial": 3}
_CONTRAST = {"crows_feet": 0.40, "under_eye": 0.35, "forehead": 0.35, "nasolabial": 0.40}


def _dilate(masks: np.ndarray) -> np.ndarray:
    """Union over regions, grown by one pixel (bilinear posing smears a line by that much)."""
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in masks.any(1)]).astype(bool)


def test_same_seed_same_faces_other_seed_other_faces():
    a, b = make_synthetic_faces(12, 48, seed=3), make_synthetic_faces(12, 48, seed=3)
    c = make_synthetic_faces(12, 48, seed=4)
    for field in ("images", "ages", "subjects", "masks"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images)


def test_shapes_types_and_ranges():
    spec = SyntheticFaceSpec(age_min=20, age_max=30, images_per_subject=4)
    f = make_synthetic_faces(10, 40, seed=0, spec=spec)
    assert f.images.shape == (10, 40, 40, 3) and f.images.dtype == np.uint8
    assert f.masks.shape == (10, len(REGION_NAMES), 40, 40) and f.masks.dtype == bool
    assert f.ages.dtype == np.float32 and f.subjects.dtype == np.int64
    assert f.region_names == REGION_NAMES and len(f.params) == 10
    assert ((f.ages >= 20) & (f.ages <= 30)).all() and (f.ages == np.round(f.ages)).all()
    np.testing.assert_array_equal(f.subjects, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    assert f.masks.any(axis=(2, 3)).all(), "every region is visible in every face"


def test_each_subject_is_seen_at_several_ages():
    f = make_synthetic_faces(200, 32, seed=1)
    ages_per_subject = [len(np.unique(f.ages[f.subjects == s])) for s in np.unique(f.subjects)]
    assert len(ages_per_subject) == 20 and min(ages_per_subject) >= 3


@pytest.mark.parametrize("size", [128, 64])
def test_aging_changes_pixels_only_inside_the_region_masks(size):
    n = 30
    young = make_synthetic_faces(n, size, seed=2, ages=np.full(n, 10.0))
    old = make_synthetic_faces(n, size, seed=2, ages=np.full(n, 80.0))
    np.testing.assert_array_equal(young.masks, old.masks)
    diff = np.abs(old.images.astype(int) - young.images.astype(int)).sum(-1)
    assert diff.sum() > 0
    assert diff[young.masks.any(1)].sum() / diff.sum() > 0.95
    assert diff[~_dilate(young.masks)].max() == 0, "age leaked outside the (1-pixel grown) masks"


def test_every_region_carries_age_signal_growing_with_age():
    n, ages = 20, [10, 25, 40, 55, 70, 80]
    base = make_synthetic_faces(n, 64, seed=5, ages=np.full(n, 10.0))
    per_region = []
    for age in ages:
        f = make_synthetic_faces(n, 64, seed=5, ages=np.full(n, float(age)))
        diff = np.abs(f.images.astype(int) - base.images.astype(int)).sum(-1)
        per_region.append([diff[f.masks[:, r]].mean() for r in range(len(REGION_NAMES))])
    per_region = np.array(per_region)  # (ages, R)
    assert (np.diff(per_region.sum(1)) > 0).all(), per_region
    assert (np.diff(per_region, axis=0) >= -1e-9).all(), per_region
    assert (per_region[-1] > 5).all(), "every region is clearly marked at 80"


def test_region_strength_matches_plain_formula():
    ages = np.random.default_rng(0).uniform(0, 100, 50)
    got = region_strength(ages)
    for i, age in enumerate(ages):
        for r, name in enumerate(REGION_NAMES):
            onset, full = REGION_AGES[name]
            ref = 0.0 if age <= onset else 1.0 if age >= full else (age - onset) / (full - onset)
            assert got[i, r] == pytest.approx(ref, abs=1e-12)


def test_line_weights_match_a_loop_and_grow_with_age():
    rng = np.random.default_rng(1)
    s, gain = rng.uniform(0, 1, (7, len(REGION_NAMES))), rng.uniform(0.8, 1.2, 7)
    got = line_weights(s, gain)
    for i in range(7):
        ref = []
        for r, name in enumerate(REGION_NAMES):
            for k in range(_LINES[name]):
                ref.append(min(1.0, max(0.0, s[i, r] * _LINES[name] - k)) * (0.5 + 0.5 * s[i, r]) * _CONTRAST[name])
            if name == "under_eye":
                ref.append(0.12 * s[i, r])
        np.testing.assert_allclose(got[i], np.array(ref) * gain[i], rtol=1e-12)
    w = line_weights(region_strength(np.arange(0, 101)))
    assert (np.diff(w, axis=0) >= 0).all() and (np.diff(w.sum(1)[10:81]) > 0).all()
    assert (w[0] == 0).all()


def test_decoys_and_pose_are_drawn_independently_of_age():
    f = make_synthetic_faces(2000, 16, seed=6)
    for column in ("decoy_cheeks", "decoy_clothes", "decoy_background", "rotation_deg", "scale", "light"):
        r = np.corrcoef(f.params[column], f.ages)[0, 1]
        assert abs(r) < 0.1, (column, r)


def test_regions_move_with_pose_and_identity():
    """A fixed patch cannot follow them: each region's centre wanders by several pixels."""
    f = make_synthetic_faces(100, 128, seed=7)
    yy, xx = np.mgrid[:128, :128]
    for r, name in enumerate(REGION_NAMES):
        centres = np.array([(xx[m].mean(), yy[m].mean()) for m in f.masks[:, r]])
        assert centres.std(0).min() > 3.0, name


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="ages must have shape"):
        make_synthetic_faces(4, 32, ages=np.zeros(3))
    with pytest.raises(ValueError, match="age_min"):
        SyntheticFaceSpec(age_min=50, age_max=40)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_faces(4, 8)


def test_picture_of_faces_and_masks(tmp_path):
    """Four people (rows) at 12, 30, 50, 80 with their region masks outlined; look at it after changes
    (ADPF_ARTIFACTS=1 writes it to tests/artifacts/synthetic_masks.png)."""
    ages = np.array([12, 30, 50, 80] * 4, dtype=float)
    f = make_synthetic_faces(16, 128, seed=11, ages=ages, spec=SyntheticFaceSpec(images_per_subject=4))
    colours = np.array([[255, 40, 40], [40, 220, 40], [60, 90, 255], [255, 220, 0]], np.uint8)
    tiles = []
    for img, masks in zip(f.images, f.masks):
        outlined = img.copy()
        for m, c in zip(masks, colours):
            edge = m & ~cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            outlined[edge] = c
        tiles.append(np.concatenate([img, outlined], 0))
    grid = np.concatenate([np.concatenate(tiles[i * 4:(i + 1) * 4], 1) for i in range(4)], 0)
    out = (Path(__file__).parent / "artifacts" if os.environ.get("ADPF_ARTIFACTS") else tmp_path) / "synthetic_masks.png"
    out.parent.mkdir(exist_ok=True)
    Image.fromarray(grid).save(out)
    assert Image.open(out).size == (4 * 128, 4 * 256)


@pytest.mark.parametrize("n, per_subject", [(173, 10), (37, 4), (61, 3)])
def test_iter_yields_the_faces_make_draws(n, per_subject):
    """Chunks of people (the last one short, its last person too) add up to the same faces."""
    spec = SyntheticFaceSpec(images_per_subject=per_subject)
    whole = make_synthetic_faces(n, 24, seed=8, spec=spec)
    chunks = list(iter_synthetic_faces(n, 24, seed=8, spec=spec))
    assert len(chunks) > 1
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole.images)
    np.testing.assert_array_equal(np.concatenate([c.masks for c in chunks]), whole.masks)
    np.testing.assert_array_equal(np.concatenate([c.subjects for c in chunks]), whole.subjects)
    assert whole.masks.any(axis=(2, 3)).all()


def test_pixel_noise_has_the_drawn_standard_deviation():
    """The same faces without noise and with it differ by zero-mean noise of std ``noise_std``."""
    clean = make_synthetic_faces(20, 48, seed=3, spec=SyntheticFaceSpec(noise_std=(0, 0)))
    noisy = make_synthetic_faces(20, 48, seed=3)
    noise = (noisy.images.astype(float) - clean.images.astype(float)).reshape(20, -1) / 255
    np.testing.assert_allclose(noise.std(1), noisy.params["noise_std"], rtol=0.05)
    assert np.abs(noise.mean(1)).max() < 0.002
    assert np.abs(noise).max() <= (noisy.params["noise_std"] * math.sqrt(3)).max() + 1 / 255


def _ellipse_reference(size, cx, cy, rx, ry, mirrored):
    """Coverage of the ellipse at every pixel centre, a plain float64 loop (``mirrored``: in |x|)."""
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            x, y = (j + 0.5) / size * 2 - 1, (i + 0.5) / size * 2 - 1
            rho = math.hypot(((abs(x) if mirrored else x) - cx) / rx, (y - cy) / ry)
            out[i, j] = min(1.0, max(0.0, (1 - rho) * min(rx, ry) / (2 / size) + 0.5))
    return out


@pytest.mark.parametrize("size", [16, 33, 64])
def test_shapes_drawn_in_their_boxes_match_the_whole_frame(size):
    """A shape computed only in its box (a symmetric one on the right half, then mirrored)
    equals the formula at every pixel: the box holds all of it, the mirror is exact."""
    rng, g = np.random.default_rng(size), make_grid(size)
    canvas = _Canvas(g, 1)
    for _ in range(4):
        (cx, cy), (rx, ry) = rng.uniform(-0.4, 0.4, 2), rng.uniform(0.03, 0.4, 2)
        box = g.box(*g.ellipse_extent(cx, cy, rx, ry))
        plain = np.zeros((size, size), np.float32)
        plain[box.rows, box.cols] = _ellipse(box, cx, cy, rx, ry, g.px)
        np.testing.assert_allclose(plain, _ellipse_reference(size, cx, cy, rx, ry, False), atol=1e-4)
        box = g.box(*g.ellipse_extent(abs(cx), cy, rx, ry), right=True)
        mirrored = canvas.place(box, _ellipse(box, abs(cx), cy, rx, ry, g.px))[0]
        np.testing.assert_allclose(mirrored, _ellipse_reference(size, abs(cx), cy, rx, ry, True), atol=1e-4)


@pytest.mark.parametrize("size", [16, 17])
def test_mirrored_painting_paints_every_pixel_once(size):
    """Painting half coverage over a box across the centre gives half the colour on both sides,
    the centre column of an odd size included (painted twice it would be 3/4)."""
    g = make_grid(size)
    canvas = _Canvas(g, 2)
    box = g.box(-0.5, 0.5, -0.5, 0.5, right=True)
    canvas.paint(box, (0.8, 0.4, 0.2), np.full((2, box.y.shape[0], box.x.shape[1]), 0.5, np.float32))
    inside = np.zeros((size, size), bool)
    inside[box.rows, size - box.cols.stop:box.cols.stop] = True
    assert inside[:, size // 2].any() and inside.sum() == box.y.shape[0] * (2 * box.x.shape[1] - size % 2)
    for channel, value in enumerate((0.8, 0.4, 0.2, 1.0)):
        np.testing.assert_allclose(canvas.rgba[:, channel][:, inside], 0.5 * value, rtol=1e-6)
        assert (canvas.rgba[:, channel][:, ~inside] == 0).all()


def test_drawing_leaves_opencv_threads_as_they_were():
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        make_synthetic_faces(3, 16)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_masks_warped_around_their_box_match_a_whole_warp():
    """Only the rectangle around the posed masks is warped; the result is the whole warp's, but
    where the warp's fixed-point rounding of the other origin tips a value sitting on 127.5."""
    rng, differing = np.random.default_rng(4), 0
    for _ in range(40):
        masks = np.zeros((len(REGION_NAMES), 40, 40), bool)
        top, left = rng.integers(0, 20, 2)
        masks[:, top:top + 15, left:left + 12] = rng.random((len(REGION_NAMES), 15, 12)) > 0.4
        M = cv2.getRotationMatrix2D((19.5, 19.5), rng.uniform(-30, 30), rng.uniform(0.8, 1.3))
        M[:, 2] += rng.uniform(-15, 15, 2)
        hwc = np.ascontiguousarray(masks.transpose(1, 2, 0)).astype(np.uint8) * np.uint8(255)
        whole = cv2.warpAffine(hwc, M, (40, 40), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        whole = whole.transpose(2, 0, 1)
        out = np.ones_like(masks)
        _warp_masks(hwc, _box_of(masks), M, out)
        assert np.abs(whole[out != (whole > 127)].astype(float) - 127.5).max(initial=0) <= 1
        differing += (out != (whole > 127)).sum()
    assert differing <= 2


def test_light_carried_to_the_persons_frame_is_the_images_light():
    """The lighting plane drawn in the canonical frame, at a canonical pixel, equals the image's
    lighting gradient 1 + light·(x cos a + y sin a) where the pose puts that pixel (float64 loop)."""
    size, n = 24, 6
    params = make_synthetic_faces(n, size, seed=5).params
    frames = image_frames(make_grid(size), {k: v.to_numpy() for k, v in params.items()})
    for i in range(n):
        got = frames["light_y"][i] @ frames["light_x"][i]
        M, light, angle = frames["pose"][i], params["light"][i], params["light_angle"][i]
        for v in range(size):
            for u in range(size):
                px, py = M @ [u, v, 1.0]
                x, y = (px + 0.5) / size * 2 - 1, (py + 0.5) / size * 2 - 1
                assert got[v, u] == pytest.approx(1 + light * (x * math.cos(angle) + y * math.sin(angle)), abs=1e-5)
