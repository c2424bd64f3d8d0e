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
                                default_dataset, draw_offsets, images_to_tensor, load_prepared, pad_crop_flip,
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


def _reference_augment(image, pad, top, left, flip):
    c, h, w = image.shape
    out = np.zeros_like(image)
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                sy, sx = y + top - pad, (w - 1 - x if flip else x) + left - pad
                out[ch, y, x] = image[ch, sy, sx] if 0 <= sy < h and 0 <= sx < w else 0
    return out


def test_pad_crop_flip_matches_a_loop_and_moves_masks_with_the_image():
    image = torch.rand(3, 9, 11, dtype=torch.float64)
    masks = image[:2] > 0.5
    pad, seen = 3, set()
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
        flip = bool(torch.randint(0, 2, (1,), generator=g))
        offsets = draw_offsets(1, pad, torch.Generator().manual_seed(seed))[0]
        out, out_masks = pad_crop_flip(image, masks, pad, offsets)
        np.testing.assert_array_equal(out.numpy(), _reference_augment(image.numpy(), pad, top, left, flip))
        torch.testing.assert_close(out_masks, out[:2] > 0.5)
        seen.add((top, left, flip))
    assert {t for t, _, _ in seen} == set(range(7)) and {f for *_, f in seen} == {True, False}


def test_the_batch_augmentation_is_pad_crop_flip_face_by_face():
    """augment_batch (the device path) with the offsets draw_offsets gives equals pad_crop_flip (the
    DataLoader path) with the same generator, face by face: the same augmentation, drawn the same way."""
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (40, 9, 11, 3), dtype=np.uint8)
    pad = 3
    offsets = draw_offsets(len(faces), pad, torch.Generator().manual_seed(1))
    batch = augment_batch(torch.from_numpy(faces), offsets, pad)
    assert batch.shape == (40, 3, 9, 11) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    for face, out, (top, left, flip) in zip(faces, batch, offsets.tolist()):
        reference = _reference_augment(images_to_tensor(face).numpy(), pad, top, left, flip)
        np.testing.assert_array_equal(out.numpy(), reference)
    for seed in range(5):  # one face, one draw: the host path and the batch path agree
        expected, _ = pad_crop_flip(images_to_tensor(faces[0]), None, pad,
                                    draw_offsets(1, pad, torch.Generator().manual_seed(seed))[0])
        got = augment_batch(torch.from_numpy(faces[:1]), draw_offsets(1, pad, torch.Generator().manual_seed(seed)), pad)
        torch.testing.assert_close(got[0], expected, rtol=0, atol=0)


def test_augmented_items_and_batches_say_how_each_face_was_moved(tmp_path):
    """An augmented item's (and a device batch's) offsets are the draw that made its image, so
    boxes found on the stored face can be moved with it (adpf.patches.move_boxes)."""
    data = load_prepared(write_synthetic_prepared(tmp_path / "syn", 6, 16, seed=2))
    faces = PreparedFaces(data, augment=True, pad=2)
    torch.manual_seed(0)
    for j in range(6):
        item = faces[j]
        stored = images_to_tensor(np.array(data.images[j]))
        moved, masks = pad_crop_flip(stored, torch.from_numpy(np.array(data.masks[j])), 2, item["offsets"])
        assert item["offsets"].shape == (3,) and torch.equal(item["image"], moved) and torch.equal(item["masks"], masks)
    assert "offsets" not in PreparedFaces(data)[0]
    for batch in DeviceBatches(data, np.arange(6), 3, "cpu", train=True, pad=2, generator=torch.Generator().manual_seed(0)):
        stored = torch.from_numpy(np.array(data.images[batch["index"].numpy()]))
        assert torch.equal(batch["image"], augment_batch(stored, batch["offsets"], 2))


def test_offsets_are_uniform_and_independent():
    pad, n = 2, 50_000
    offsets = draw_offsets(n, pad, torch.Generator().manual_seed(0)).numpy()
    cells = np.unique(offsets, axis=0, return_counts=True)[1]
    assert len(cells) == 5 * 5 * 2  # every (top, left, flip)
    expected = n / len(cells)
    chi2 = ((cells - expected) ** 2 / expected).sum()
    assert chi2 < 100  # 49 degrees of freedom: P(chi2 > 100) < 1e-4


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
                                            torch.tensor([[t, left, f]]), 1)[0]
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
