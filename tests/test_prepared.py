"""The prepared on-disk format, PreparedFaces and the paper's augmentation."""
import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from adpf.data.prepared import (DeviceBatches, PreparedFaces, PreparedFormatError, PreparedWriter, augment_batch,
                                default_dataset, draw_colours, draw_offsets, images_to_tensor, jitter_colours,
                                load_prepared, pad_crop_flip,
                                write_prepared, write_synthetic_prepared)
from adpf.data.synthetic import REGION_NAMES, make_synthetic_faces


def _random_set(n=7, size=12, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(1, 90, n), "subject": [f"p{i % 3}" for i in range(n)],
                         "path": [f"img{i}.jpg" for i in range(n)], "gender": ["m", "f"] * (n // 2) + ["m"] * (n % 2)})
    return images, meta


def test_round_trip_keeps_images_meta_and_codes_subject_names(tmp_path):
    images, meta = _random_set()
    root = write_prepared(tmp_path / "set", images, meta, name="toy", info={"source": "unit test"})
    p = load_prepared(root)
    np.testing.assert_array_equal(p.images, images)
    assert isinstance(p.images, np.memmap)
    assert p.info["name"] == "toy" and p.info["count"] == 7 and p.info["image_size"] == 12
    assert p.info["subjects"] == 3 and p.info["source"] == "unit test" and p.masks is None
    assert list(p.meta.columns[:4]) == ["index", "age", "subject", "path"]
    np.testing.assert_array_equal(p.meta["subject"], [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(p.meta["subject_name"], meta["subject"])
    np.testing.assert_array_equal(p.meta["gender"], meta["gender"])
    assert not list(tmp_path.glob(".set.tmp-*")), "the temporary folder is gone"


def test_items_follow_the_contract(tmp_path):
    images, meta = _random_set()
    ds = PreparedFaces(write_prepared(tmp_path / "set", images, meta, name="toy"), indices=[5, 2])
    assert len(ds) == 2
    item = ds[0]
    assert set(item) == {"image", "age", "subject", "index"}
    assert item["image"].shape == (3, 12, 12) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"], torch.from_numpy(images[5]).permute(2, 0, 1).double().div(255).float())
    assert item["age"].dtype == torch.float32 and item["age"].item() == meta["age"][5]
    assert item["subject"].dtype == torch.int64 and item["subject"].item() == 2
    assert item["index"].dtype == torch.int64 and item["index"].item() == 5
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 12, 12) and batch["index"].tolist() == [5, 2]
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers receive
    torch.testing.assert_close(clone[1]["image"], ds[1]["image"])
    with pytest.raises(IndexError, match="rows in 0..6"):
        PreparedFaces(ds.root, indices=[7])


def _reference_augment(image, pad, top, left, flip, side=None):
    """Float64 loops: the padded face's window of ``side`` pixels at (top, left), resized to the
    face bilinearly with pixel centres aligned (source s = (i + 0.5)·side/size − 0.5, clamped to
    the window), mirrored when flip."""
    c, h, w = image.shape
    side = h if side is None else side
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad))
    padded[:, pad:pad + h, pad:pad + w] = image

    def taps(i):
        s = min(max((i + 0.5) * side / h - 0.5, 0.0), side - 1.0)
        first = int(np.floor(s))
        return first, min(first + 1, side - 1), s - first

    out = np.zeros((c, h, w))
    for y in range(h):
        y0, y1, fy = taps(y)
        for x in range(w):
            x0, x1, fx = taps(w - 1 - x if flip else x)
            for ch in range(c):
                p = padded[ch, top:top + side, left:left + side]
                out[ch, y, x] = ((1 - fy) * ((1 - fx) * p[y0, x0] + fx * p[y0, x1])
                                 + fy * ((1 - fx) * p[y1, x0] + fx * p[y1, x1]))
    return out


def test_pad_crop_flip_matches_a_loop_and_moves_masks_with_the_image():
    image = torch.rand(3, 11, 11, dtype=torch.float64)
    masks = image[:2] > 0.5
    pad, seen = 3, set()
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
        flip = bool(torch.randint(0, 2, (1,), generator=g))
        offsets = draw_offsets(1, 11, pad, torch.Generator().manual_seed(seed))[0]
        assert offsets.tolist() == [top, left, flip, 11]  # the paper's draw, as it always was
        out, out_masks = pad_crop_flip(image, masks, pad, offsets)
        np.testing.assert_array_equal(out.numpy(), _reference_augment(image.numpy(), pad, top, left, flip))
        torch.testing.assert_close(out_masks, out[:2] > 0.5)
        seen.add((top, left, flip))
    assert {t for t, _, _ in seen} == set(range(7)) and {f for *_, f in seen} == {True, False}


def test_a_smaller_window_is_resized_as_a_loop_resizes_it_and_masks_take_the_nearest_pixel():
    """crop_scale < 1 (open choice 21): the window is resized to the face bilinearly (float64
    loops, and F.interpolate with align_corners=False on the same window), the masks by the
    nearest pixel (a loop)."""
    size, pad = 12, 2
    image = torch.rand(3, size, size, dtype=torch.float64)
    masks = torch.rand(2, size, size) > 0.5
    sides = set()
    for seed in range(40):
        offsets = draw_offsets(1, size, pad, torch.Generator().manual_seed(seed), crop_scale=0.6)[0]
        top, left, flip, side = offsets.tolist()
        sides.add(side)
        assert 8 <= side <= size and 0 <= top <= size + 2 * pad - side and 0 <= left <= size + 2 * pad - side
        out, out_masks = pad_crop_flip(image, masks, pad, offsets)
        np.testing.assert_allclose(out.numpy(), _reference_augment(image.numpy(), pad, top, left, flip, side),
                                   rtol=0, atol=1e-6)
        window = torch.nn.functional.pad(image, (pad,) * 4)[None, :, top:top + side, left:left + side]
        resized = torch.nn.functional.interpolate(window, size=(size, size), mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out, resized.flip(-1) if flip else resized, rtol=0, atol=1e-6)
        padded = torch.nn.functional.pad(masks, (pad,) * 4)
        for y in range(size):
            for x in range(size):
                sx = min(int((((size - 1 - x) if flip else x) + 0.5) * side / size), side - 1)
                sy = min(int((y + 0.5) * side / size), side - 1)
                assert torch.equal(out_masks[:, y, x], padded[:, top + sy, left + sx])
    assert len(sides) > 3


def test_the_batch_augmentation_is_pad_crop_flip_face_by_face():
    """augment_batch (the device path) with the offsets draw_offsets gives equals pad_crop_flip (the
    DataLoader path) with the same generator, face by face: the same augmentation, drawn the same way,
    with the paper's windows, smaller windows and the colour switches."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (40, 11, 11, 3), dtype=np.uint8)
    pad = 3
    offsets = draw_offsets(len(faces), 11, pad, torch.Generator().manual_seed(1))
    batch = augment_batch(torch.from_numpy(faces), offsets, pad)
    assert batch.shape == (40, 3, 11, 11) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    for face, out, (top, left, flip, side) in zip(faces, batch, offsets.tolist()):
        reference = _reference_augment(images_to_tensor(face).numpy(), pad, top, left, flip, side)
        np.testing.assert_array_equal(out.numpy(), reference.astype(np.float32))
    for crop_scale, jitter, gray in [(1.0, 0.0, 0.0), (0.7, 0.0, 0.0), (0.8, 0.3, 0.5)]:
        g = torch.Generator().manual_seed(2)
        offsets = draw_offsets(len(faces), 11, pad, g, crop_scale)
        colours = draw_colours(len(faces), jitter, gray, g)
        batch = augment_batch(torch.from_numpy(faces), offsets, pad, colours)
        for j, face in enumerate(faces):
            expected, _ = pad_crop_flip(images_to_tensor(face), None, pad, offsets[j],
                                        None if colours is None else colours[j])
            torch.testing.assert_close(batch[j], expected, rtol=0, atol=0)


def test_the_colour_switches_match_a_loop_and_are_off_by_default():
    """jitter_colours against float64 loops (brightness, contrast about the mean gray level,
    saturation about each pixel's gray level, then gray); draw_colours draws nothing when off."""
    g = torch.Generator().manual_seed(0)
    assert draw_colours(5, 0.0, 0.0, g) is None and torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    with pytest.raises(ValueError, match="colour_jitter"):
        draw_colours(5, 1.5, 0.0)
    images = torch.rand(6, 3, 5, 4, dtype=torch.float64)
    colours = draw_colours(6, 0.4, 0.5, torch.Generator().manual_seed(3)).double()
    assert ((colours[:, :3] - 1).abs() <= 0.4).all() and set(colours[:, 3].tolist()) <= {0.0, 1.0}
    got = jitter_colours(images, colours)
    w = (0.299, 0.587, 0.114)
    for b in range(6):
        bright, contrast, saturation, gray = colours[b].tolist()
        x = images[b].numpy() * bright
        mean = sum(w[c] * x[c] for c in range(3)).mean()
        x = (x - mean) * contrast + mean
        level = sum(w[c] * x[c] for c in range(3))
        x = level + (x - level) * saturation
        if gray:
            level = sum(w[c] * x[c] for c in range(3))
            x = np.stack([level] * 3)
        np.testing.assert_allclose(got[b].numpy(), np.clip(x, 0, 1), rtol=0, atol=1e-12)
        if gray:
            assert torch.equal(got[b, 0], got[b, 1]) and torch.equal(got[b, 1], got[b, 2])


def test_augmented_items_and_batches_say_how_each_face_was_moved(tmp_path):
    """An augmented item's (and a device batch's) offsets are the draw that made its image, so
    boxes found on the stored face can be moved with it (adpf.patches.move_boxes)."""
    data = load_prepared(write_synthetic_prepared(tmp_path / "syn", 6, 16, seed=2))
    for crop_scale in (1.0, 0.75):
        faces = PreparedFaces(data, augment=True, pad=2, crop_scale=crop_scale)
        torch.manual_seed(0)
        for j in range(6):
            item = faces[j]
            stored = images_to_tensor(np.array(data.images[j]))
            moved, masks = pad_crop_flip(stored, torch.from_numpy(np.array(data.masks[j])), 2, item["offsets"])
            assert item["offsets"].shape == (4,) and torch.equal(item["image"], moved)
            assert torch.equal(item["masks"], masks)
        batches = DeviceBatches(data, np.arange(6), 3, "cpu", train=True, pad=2,
                                generator=torch.Generator().manual_seed(0), crop_scale=crop_scale)
        for batch in batches:
            stored = torch.from_numpy(np.array(data.images[batch["index"].numpy()]))
            assert torch.equal(batch["image"], augment_batch(stored, batch["offsets"], 2))
    assert "offsets" not in PreparedFaces(data)[0]
    with pytest.raises(ValueError, match="crop_scale"):
        PreparedFaces(data, augment=True, crop_scale=0)


def test_offsets_are_uniform_and_independent():
    pad, n = 2, 50_000
    offsets = draw_offsets(n, 16, pad, torch.Generator().manual_seed(0)).numpy()
    assert (offsets[:, 3] == 16).all()
    cells = np.unique(offsets[:, :3], axis=0, return_counts=True)[1]
    assert len(cells) == 5 * 5 * 2  # every (top, left, flip)
    expected = n / len(cells)
    chi2 = ((cells - expected) ** 2 / expected).sum()
    assert chi2 < 100  # 49 degrees of freedom: P(chi2 > 100) < 1e-4
    scaled = draw_offsets(n, 16, pad, torch.Generator().manual_seed(0), crop_scale=0.75).numpy()
    sides, counts = np.unique(scaled[:, 3], return_counts=True)
    assert sides.tolist() == list(range(12, 17)) and counts.min() > 0.9 * n / 5
    for side in sides:  # every place a window of that side has, about equally often
        rows = scaled[scaled[:, 3] == side]
        room = 16 + 2 * pad - side + 1
        tops = np.bincount(rows[:, 0], minlength=room)
        assert len(tops) == room and tops.min() > 0.7 * len(rows) / room


def test_device_batches_shuffle_augment_and_cover_the_rows(tmp_path):
    root = write_synthetic_prepared(tmp_path / "syn", 11, 16, seed=1)
    data = load_prepared(root)
    rows = np.array([1, 2, 3, 5, 7, 8, 9, 10])
    batches = DeviceBatches(data, rows, 3, "cpu", train=True, pad=1, generator=torch.Generator().manual_seed(0))
    plain = PreparedFaces(data)
    assert len(batches) == 2  # 8 rows in batches of 3: the incomplete last batch dropped
    orders = []
    for _ in range(4):
        seen = []
        for batch in batches:
            assert batch["image"].shape == (3, 3, 16, 16) and batch["age"].dtype == torch.float32
            for image, age, j in zip(batch["image"], batch["age"], batch["index"].tolist()):
                assert age == plain[j]["age"]
                candidates = [augment_batch(torch.from_numpy(np.array(data.images[j:j + 1])),
                                            torch.tensor([[t, left, f, 16]]), 1)[0]
                              for t in range(3) for left in range(3) for f in range(2)]
                assert any(torch.equal(image, c) for c in candidates)  # a pad-crop-flip of its own row
            seen += batch["index"].tolist()
        assert len(set(seen)) == 6 and set(seen) <= set(rows.tolist())
        orders.append(seen)
    assert len({tuple(o) for o in orders}) == 4  # a fresh order every epoch
    evaluation = DeviceBatches(data, rows, 5, "cpu", train=False)
    got = list(evaluation)
    assert [len(b["index"]) for b in got] == [5, 3]
    assert torch.cat([b["index"] for b in got]).tolist() == rows.tolist()
    for batch in got:
        for image, j in zip(batch["image"], batch["index"].tolist()):
            torch.testing.assert_close(image, plain[j]["image"], rtol=0, atol=0)


def test_augmented_items_keep_masks_on_the_image(tmp_path):
    root = write_synthetic_prepared(tmp_path / "syn", 6, 32, seed=1)
    plain, aug = PreparedFaces(root), PreparedFaces(root, augment=True, pad=4)
    assert aug.pad == 4 and PreparedFaces(root).pad == 2
    torch.manual_seed(0)
    for i in range(6):
        a, p = aug[i], plain[i]
        assert a["masks"].shape == p["masks"].shape == (4, 32, 32) and a["masks"].dtype == torch.bool
        # whatever window and flip were drawn, find it from the image, then check the masks
        windows = {(t, l, f): _window(p["image"], 4, t, l, f) for t in range(9) for l in range(9) for f in (0, 1)}
        found = [k for k, w in windows.items() if torch.equal(a["image"], w)]
        assert found
        assert any(torch.equal(a["masks"], _window(p["masks"], 4, *k)) for k in found)


def _window(t, pad, top, left, flip):
    w = torch.nn.functional.pad(t, (pad,) * 4)[:, top:top + t.shape[1], left:left + t.shape[2]]
    return w.flip(-1) if flip else w


def test_synthetic_writer_equals_the_generator(tmp_path):
    root = write_synthetic_prepared(tmp_path / "syn", 25, 32, seed=4)
    f, p = make_synthetic_faces(25, 32, seed=4), load_prepared(root)
    np.testing.assert_array_equal(p.images, f.images)
    np.testing.assert_array_equal(p.masks, f.masks)
    np.testing.assert_array_equal(p.meta["age"], f.ages)
    np.testing.assert_array_equal(p.meta["subject"], f.subjects)
    assert p.region_names == REGION_NAMES and p.info["seed"] == 4
    np.testing.assert_allclose(p.meta["rotation_deg"], f.params["rotation_deg"])


def test_default_dataset_is_drawn_once_and_reused(tmp_path):
    root = default_dataset(image_size=32, n=20, seed=3, cache_dir=tmp_path)
    stamp = (root / "images.npy").stat().st_mtime_ns
    assert default_dataset(image_size=32, n=20, seed=3, cache_dir=tmp_path) == root
    assert (root / "images.npy").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(load_prepared(root).images, make_synthetic_faces(20, 32, seed=3).images)
    assert default_dataset(image_size=32, n=20, seed=4, cache_dir=tmp_path) != root


def test_writer_refuses_to_overwrite_and_cleans_up_on_error(tmp_path):
    images, meta = _random_set()
    write_prepared(tmp_path / "set", images, meta, name="toy")
    with pytest.raises(FileExistsError):
        write_prepared(tmp_path / "set", images, meta, name="toy")
    write_prepared(tmp_path / "set", images[:3], meta[:3], name="toy", overwrite=True)
    assert load_prepared(tmp_path / "set").info["count"] == 3
    with pytest.raises(ValueError, match="meta has 2 rows for 7 images"):
        write_prepared(tmp_path / "other", images, meta[:2], name="toy")
    with pytest.raises(ValueError, match="lacks column"):
        write_prepared(tmp_path / "other", images, meta.drop(columns="age"), name="toy")
    with PreparedWriter(tmp_path / "partial", 2, 12, "toy") as w, pytest.raises(ValueError, match="uint8"):
        w.write(0, images[:2].astype(np.float32))
    assert not (tmp_path / "other").exists() and not (tmp_path / "partial").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "meta.csv").unlink(), "meta.csv: missing"),
    (lambda r: (r / "info.json").write_text("{not json"), "info.json: not valid JSON"),
    (lambda r: (r / "info.json").write_text(json.dumps({**json.loads((r / "info.json").read_text()), "version": 99})),
     "format version 99"),
    (lambda r: (r / "info.json").write_text(json.dumps({**json.loads((r / "info.json").read_text()), "count": 8})),
     r"images.npy: expected uint8 of shape \(8, 12, 12, 3\)"),
    (lambda r: (r / "images.npy").write_bytes((r / "images.npy").read_bytes()[:100]), "images.npy: not a readable"),
    (lambda r: pd.read_csv(r / "meta.csv")[:5].to_csv(r / "meta.csv", index=False), "meta.csv: expected 7 rows"),
    (lambda r: pd.read_csv(r / "meta.csv").drop(columns="age").to_csv(r / "meta.csv", index=False),
     r"meta.csv: missing column\(s\) \['age'\]"),
])
def test_damaged_folders_name_the_file(tmp_path, damage, message):
    images, meta = _random_set()
    root = write_prepared(tmp_path / "set", images, meta, name="toy")
    damage(root)
    with pytest.raises(PreparedFormatError, match=message):
        load_prepared(root)


def test_missing_folder_says_what_it_expects(tmp_path):
    with pytest.raises(PreparedFormatError, match="expected a folder with images.npy, meta.csv and info.json"):
        PreparedFaces(tmp_path / "nowhere")


def test_overwrite_replaces_only_folders_it_wrote(tmp_path):
    images, meta = _random_set()
    user = tmp_path / "photos"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "info.json").write_text('{"format": "something else"}')
    for root, why in ((user, "is not a prepared dataset folder"), (user / "notes.txt", "not a folder")):
        with pytest.raises(FileExistsError, match=why):
            write_prepared(root, images, meta, name="toy", overwrite=True)
    ours = write_prepared(tmp_path / "set", images, meta, name="toy")
    (ours / "sub").mkdir()
    with pytest.raises(FileExistsError, match=r"holds files adpf did not write \(sub\)"):
        write_prepared(ours, images, meta, name="toy", overwrite=True)
    (ours / "sub").rmdir()
    (tmp_path / "link").symlink_to(ours)
    with pytest.raises(FileExistsError, match="a link"):
        write_prepared(tmp_path / "link", images, meta, name="toy", overwrite=True)
    assert sorted(p.name for p in user.rglob("*")) == ["info.json", "notes.txt", "sub"]
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_drawing_shows_a_bar_only_on_a_terminal(tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for progress, terminal, shown in ((True, True, True), (True, False, False), (False, True, False)):
        err = Terminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        write_synthetic_prepared(tmp_path / f"s{progress}{terminal}", 6, 16, progress=progress)
        assert ("drawing faces" in err.getvalue() and "6/6" in err.getvalue()) is shown, (progress, terminal)


def test_images_to_tensor_is_bytes_over_255_channel_first(tmp_path):
    images = np.random.default_rng(4).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 128, 255)
    expected = np.moveaxis(images.astype(np.float64) / 255, -1, -3).astype(np.float32)  # (5, 3, 6, 7)
    batch = images_to_tensor(images)
    assert batch.dtype == torch.float32 and batch.shape == (5, 3, 6, 7)
    assert torch.equal(batch, torch.from_numpy(expected))  # bit for bit: v / 255 rounded once to float32
    assert batch[0, :, 0, 0].tolist() == [0.0, np.float32(128 / 255), 1.0]
    one = images_to_tensor(images[2])
    assert one.shape == (3, 6, 7) and torch.equal(one, torch.from_numpy(expected[2]))
    np.save(tmp_path / "faces.npy", images)
    mapped = np.load(tmp_path / "faces.npy", mmap_mode="r")  # read-only: copied, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(images_to_tensor(mapped[1]), one.new_tensor(expected[1]))
    for bad in (images.astype(np.float32), images[..., :2], images[0, :, :, 0], torch.from_numpy(images)):
        with pytest.raises(ValueError, match=r"images_to_tensor expects a uint8 numpy array \(H, W, 3\) or "
                                             r"\(N, H, W, 3\), got"):
            images_to_tensor(bad)
