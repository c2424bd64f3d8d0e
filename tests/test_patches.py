"""Maps → boxes (both implementations of the same rule), crops, and the fixed layout."""
import ast
import inspect
import itertools
import random
import textwrap
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from adpf import patches
from adpf.data.prepared import pad_crop_flip
from adpf.patches import FACE_PARTS, crop_patches, fixed_boxes, label_rounds, maps_to_boxes, move_boxes

S = 64


def check_valid(boxes, size, min_side, max_side):
    x0, y0, x1, y1 = boxes.unbind(-1)
    assert boxes.dtype == torch.int64
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
    side = x1 - x0
    assert torch.equal(side, y1 - y0)  # square
    assert (side >= min_side).all() and (side <= max_side).all()


def peak_of(maps, size):
    up = F.interpolate(maps.flatten(0, 1)[:, None].float(), size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0]
    idx = up.flatten(1).argmax(1)
    return (idx // size).reshape(maps.shape[:2]), (idx % size).reshape(maps.shape[:2])


@pytest.mark.parametrize("method", ["torch", "cv2"])
def test_boxes_inside_image_and_cover_peak(method):
    torch.manual_seed(0)
    maps = F.avg_pool2d(torch.randn(6, 5, 20, 20), 5, 1)  # smooth 16x16 maps, like attention
    boxes = maps_to_boxes(maps, S, "mean", 0.15, 0.6, method=method)
    assert boxes.shape == (6, 5, 4)
    check_valid(boxes, S, round(0.15 * S), round(0.6 * S))
    py, px = peak_of(maps, S)
    x0, y0, x1, y1 = boxes.unbind(-1)
    assert ((x0 <= px) & (px < x1) & (y0 <= py) & (py < y1)).all()


def test_box_is_the_blob_bounding_square():
    maps = torch.zeros(1, 1, 16, 16)
    maps[0, 0, 4:8, 9:11] = 1.0  # a 4x2 blob -> 16x8 pixels at 64, mask holds it (threshold 0.5)
    maps[0, 0, 12:15, 1:3] = 0.9  # a second region that does not hold the peak
    for method in ("torch", "cv2"):
        (box,) = maps_to_boxes(maps, S, 0.5, 0.01, 1.0, method=method)[0]
        x0, y0, x1, y1 = box.tolist()
        # bilinear resize spreads the blob by up to 2 px each side; the region spans rows 16..31
        assert 14 <= y0 <= 16 and 32 <= y1 <= 34 and y1 - y0 == x1 - x0
        assert 34 <= (x0 + x1) / 2 <= 46  # centred on the blob's columns 36..43
        assert y1 <= 48  # the second region is not included


def test_boxes_follow_the_map_order():
    maps = torch.zeros(1, 3, 16, 16)
    maps[0, 0, 2, 2] = maps[0, 1, 13, 13] = maps[0, 2, 2, 13] = 1.0
    for order in ([0, 1, 2], [2, 0, 1]):
        boxes = maps_to_boxes(maps[:, order], S, min_frac=0.2, max_frac=0.2)[0]
        centres = ((boxes[:, 0] + boxes[:, 2]) // 2, (boxes[:, 1] + boxes[:, 3]) // 2)
        expected = {0: (10, 10), 1: (54, 54), 2: (54, 10)}
        for k, head in enumerate(order):
            cx, cy = expected[head]
            assert abs(centres[0][k] - cx) <= 7 and abs(centres[1][k] - cy) <= 7


@pytest.mark.parametrize("method", ["torch", "cv2"])
def test_flat_zero_and_nan_maps_give_centred_boxes(method):
    maps = torch.randn(1, 4, 8, 8)
    maps[0, 0] = 0.0
    maps[0, 1] = 3.7
    maps[0, 2, 3, 3] = float("nan")
    maps[0, 3, 1, 1] = float("inf")
    boxes = maps_to_boxes(maps, S, min_frac=0.25, max_frac=0.5, method=method)[0]
    side = round(0.5 * S)
    centred = torch.tensor([(S - side) // 2, (S - side) // 2, (S - side) // 2 + side, (S - side) // 2 + side])
    for k in range(4):
        assert torch.equal(boxes[k], centred)


def test_peak_stays_inside_when_region_exceeds_max_side():
    maps = torch.zeros(1, 1, 16, 16)
    maps[0, 0, :, :] = torch.linspace(0, 1, 16)[None, :] * 0.1 + 1.0  # wide plateau rising to the right
    maps[0, 0, 8, 15] = 2.0
    boxes = maps_to_boxes(maps, S, 0.0, 0.1, 0.25, method="torch")
    x0, y0, x1, y1 = boxes[0, 0].tolist()
    py, px = (int(t) for t in peak_of(maps, S))
    assert px > 48 and x1 - x0 == 16
    # the region is the whole image, so the centred box misses the peak: it moves just enough
    assert x1 == px + 1 and y0 <= py < y1


def test_torch_and_cv2_agree_on_random_maps():
    torch.manual_seed(1)
    for trial in range(8):
        maps = torch.randn(3, 4, 6 + trial, 6 + trial)  # rough maps: many nested, snaking regions
        for threshold in ("mean", 0.0, 0.4, 0.9, 1.0):
            a = maps_to_boxes(maps, 48, threshold, 0.05, 1.0, method="torch")
            b = maps_to_boxes(maps, 48, threshold, 0.05, 1.0, method="cv2")
            assert torch.equal(a, b), (trial, threshold)


@pytest.mark.parametrize("h,size", [(16, 64), (32, 128), (7, 45), (11, 33)])
def test_torch_and_cv2_agree_at_the_presets_sizes_and_odd_sizes(h, size):
    torch.manual_seed(h)
    rough = torch.randn(4, 5, h, h)
    smooth = F.avg_pool2d(torch.randn(4, 5, h + 4, h + 4), 5, 1)
    for maps in (rough, smooth):
        for threshold in ("mean", 0.3, 0.7):
            a = maps_to_boxes(maps, size, threshold, 0.05, 1.0, method="torch")
            b = maps_to_boxes(maps, size, threshold, 0.05, 1.0, method="cv2")
            assert torch.equal(a, b), threshold


def loop_labels(mask):
    """Plain breadth-first reference: each set pixel's label is the smallest 2×2-block index in its component."""
    s = len(mask)
    blocks = (s + 1) // 2
    labels = [[blocks * blocks] * s for _ in range(s)]
    seen = set()
    for start in itertools.product(range(s), range(s)):
        if not mask[start[0]][start[1]] or start in seen:
            continue
        component, queue = [], deque([start])
        seen.add(start)
        while queue:
            y, x = queue.popleft()
            component.append((y, x))
            for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                q = (y + dy, x + dx)
                if 0 <= q[0] < s and 0 <= q[1] < s and mask[q[0]][q[1]] and q not in seen:
                    seen.add(q)
                    queue.append(q)
        label = min((y // 2) * blocks + x // 2 for y, x in component)
        for y, x in component:
            labels[y][x] = label
    return torch.tensor(labels)


def test_component_labels_match_a_loop_reference():
    every_3x3 = torch.tensor(list(itertools.product((False, True), repeat=9))).view(-1, 3, 3)
    torch.manual_seed(0)
    masks = [every_3x3] + [torch.rand(40, s, s) < p for s in (1, 2, 4, 5, 8, 9) for p in (0.3, 0.5, 0.7)]
    for batch in masks:
        labels = patches._component_labels(batch)
        for mask, got in zip(batch, labels):
            assert torch.equal(got, loop_labels(mask.tolist())), mask.int()


def test_region_boxes_match_cv2_on_every_4x4_mask():
    masks = torch.tensor(list(itertools.product((False, True), repeat=16)))[1:].view(-1, 4, 4)
    first = masks.flatten(1).int().argmax(dim=1)  # a peak: the first set pixel
    peaks = torch.stack([first // 4, first % 4], dim=1)
    assert torch.equal(patches._region_boxes_torch(masks, peaks), patches._region_boxes_cv2(masks, peaks))


def maze(size, seed):
    """A 1-pixel-wide maze (a random spanning tree of a (size/2)² grid of cells): one long, twisted component."""
    rnd, cells = random.Random(seed), size // 2
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[0, 0] = True
    seen, stack = {(0, 0)}, [(0, 0)]
    while stack:
        y, x = stack[-1]
        free = [(y + dy, x + dx) for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))
                if 0 <= y + dy < cells and 0 <= x + dx < cells and (y + dy, x + dx) not in seen]
        if not free:
            stack.pop()
            continue
        ny, nx = rnd.choice(free)
        seen.add((ny, nx))
        mask[2 * ny, 2 * nx] = mask[y + ny, x + nx] = True
        stack.append((ny, nx))
    return mask


def slow_shapes(size):
    """Masks whose components are long paths: mazes (straight and turned 45°), snakes along rows and diagonals."""
    shapes = [maze(size, seed) for seed in range(3)]
    for seed in range(2):  # a maze turned 45°: every step of its corridors is diagonal
        small, turned = maze(size // 2, seed), torch.zeros(size, size, dtype=torch.bool)
        ys, xs = small.nonzero(as_tuple=True)
        turned[ys + xs, xs - ys + size // 2 - 1] = True
        shapes.append(turned)
    rows = torch.zeros(size, size, dtype=torch.bool)
    rows[::2] = True
    rows[1::4, -1] = rows[3::4, 0] = True  # a snake along the rows
    shapes += [rows, rows.T.contiguous()]
    diagonals = torch.zeros(size, size, dtype=torch.bool)
    for k, d in enumerate(range(0, size, 3)):  # anti-diagonals joined at alternate ends
        i = torch.arange(d + 1)
        diagonals[i, d - i] = True
        if d + 3 < size:
            if k % 2:
                diagonals[d + 1:d + 3, 0] = True
            else:
                diagonals[0, d + 1:d + 3] = True
    shapes.append(diagonals)
    return torch.stack(shapes)


@pytest.mark.parametrize("size", [64, 128])
def test_the_fixed_rounds_settle_the_labels_of_long_paths(size):
    masks = slow_shapes(size)
    labels = patches._component_labels(masks)
    assert torch.equal(labels, patches._component_labels(masks, rounds=4 * label_rounds(size)))
    for mask, got in zip(masks, labels):
        assert torch.equal(got, loop_labels(mask.tolist()))
    # the margin: two rounds fewer than the fixed count already settle every one of them
    assert torch.equal(labels, patches._component_labels(masks, rounds=label_rounds(size) - 2))
    assert not torch.equal(labels, patches._component_labels(masks, rounds=3))  # the paths do need rounds


TORCH_PATH = [patches.maps_to_boxes, patches._threshold_masks, patches._region_boxes_torch,
              patches._component_labels, patches._block_graph, patches._neighbour_min, patches._square_boxes]


def test_the_torch_path_reads_nothing_back_to_the_host():
    """No .item()/.cpu()/.tolist()/.numpy(), no NumPy or cv2, no data-dependent loop in the torch path."""
    for function in TORCH_PATH:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        if function is patches.maps_to_boxes:  # the cv2 branch is the reference, not the training path
            for node in ast.walk(tree):
                if isinstance(node, ast.If) and "cv2" in ast.unparse(node.test):
                    node.body = []
        for node in ast.walk(tree):
            assert not isinstance(node, ast.While), function.__name__
            if isinstance(node, ast.Attribute):
                assert node.attr not in {"item", "cpu", "tolist", "numpy", "nonzero"}, (function.__name__, node.attr)
            if isinstance(node, ast.Name):
                assert node.id not in {"np", "cv2", "len", "bool"}, (function.__name__, node.id)


def test_the_torch_path_runs_on_the_meta_device():
    """Meta tensors hold no data: any read of a value on the host (``.item()``, a boolean mask, a
    data-dependent shape) raises there, so this is the CPU's check that box finding never syncs."""
    maps = torch.randn(2, 5, 16, 16, device="meta")
    boxes = maps_to_boxes(maps, 64)
    assert boxes.device.type == "meta" and boxes.shape == (2, 5, 4) and boxes.dtype == torch.int64
    assert maps_to_boxes(maps, 64, threshold=0.4).shape == (2, 5, 4)


def test_a_region_inside_a_hole_is_found():
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 4:28, 4:28] = 0.8
    mask[0, 0, 8:24, 8:24] = 0.0  # a ring...
    mask[0, 0, 14:18, 14:18] = 1.0  # ...around the peak's blob
    for method in ("torch", "cv2"):
        x0, y0, x1, y1 = maps_to_boxes(mask, 32, 0.5, 0.01, 1.0, method=method)[0, 0].tolist()
        assert x1 - x0 <= 6 and 13 <= x0 <= 15 and 13 <= y0 <= 15


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="threshold"):
        maps_to_boxes(torch.rand(1, 1, 4, 4), 16, threshold=1.5)
    with pytest.raises(ValueError, match="method"):
        maps_to_boxes(torch.rand(1, 1, 4, 4), 16, method="skimage")
    with pytest.raises(ValueError, match=r"\(B, n, h, w\)"):
        maps_to_boxes(torch.rand(1, 4, 4), 16)


def test_crop_of_patch_size_copies_pixels_and_full_box_is_identity():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    boxes = torch.tensor([[[3, 5, 11, 13], [0, 0, 8, 8]], [[16, 12, 24, 20], [10, 2, 18, 10]]])
    patches = crop_patches(images, boxes, 8)
    assert patches.shape == (2, 2, 3, 8, 8)
    for b in range(2):
        for k in range(2):
            x0, y0, x1, y1 = boxes[b, k].tolist()
            torch.testing.assert_close(patches[b, k], images[b, :, y0:y1, x0:x1])
    full = crop_patches(images, torch.tensor([[[0, 0, 24, 20]]] * 2), 20)
    assert full.shape == (2, 1, 3, 20, 20)


def test_crop_downsamples_by_averaging_pixel_pairs():
    images = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    patch = crop_patches(images, torch.tensor([[[0, 0, 4, 4]]]), 2)[0, 0, 0]
    # each output pixel centre falls between 2x2 input pixels: bilinear = their mean
    torch.testing.assert_close(patch, torch.tensor([[2.5, 4.5], [10.5, 12.5]], dtype=torch.float64))


def test_fixed_boxes():
    for n in range(1, len(FACE_PARTS) + 1):
        boxes = fixed_boxes(n, 128)
        assert boxes.shape == (n, 4)
        check_valid(boxes, 128, 1, 128)
    eyes = fixed_boxes(2, 128)
    assert eyes[0, 0] < 64 < eyes[1, 2]  # left eye left of centre, right eye right of it
    with pytest.raises(ValueError, match="face parts"):
        fixed_boxes(len(FACE_PARTS) + 1, 128)


def test_the_median_baseline_keeps_one_dark_pixel_from_making_the_box_the_whole_face():
    # a blob of side ~4 cells on a flat background, and one very dark cell far from it
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    m = torch.exp(-((ys - 5) ** 2 + (xs - 10) ** 2) / (2 * 1.5 ** 2))
    m[14, 1] = -5.0
    maps = m[None, None]
    by_min = maps_to_boxes(maps, 64, 0.5, 0.15, 0.6, baseline="min")[0, 0]
    by_median = maps_to_boxes(maps, 64, 0.5, 0.15, 0.6, baseline="median")[0, 0]
    assert by_min[2] - by_min[0] == round(0.6 * 64)  # min-max: everything but the dark cell is "high"
    side = int(by_median[2] - by_median[0])
    assert 8 <= side <= 20  # half maximum of a blob with sigma 1.5 cells (4 px each): about 4 * 2.4 * 1.5 px
    cx, cy = (by_median[0] + by_median[2]) / 2, (by_median[1] + by_median[3]) / 2
    assert abs(cx - 10.5 * 4) <= 4 and abs(cy - 5.5 * 4) <= 4


def test_moved_boxes_hold_what_the_augmentation_moved_into_the_image():
    """move_boxes against the pixels themselves: each box drawn as a mask on the stored face and
    moved by pad_crop_flip (the augmentation) is the moved box where it stays inside the image;
    where it sticks out, the moved box keeps its side, lies inside the image and holds every
    pixel of the mask that is still in view."""
    rng = random.Random(0)
    size, pad, clipped = 16, 3, 0
    for _ in range(400):
        side = rng.randint(2, size)
        x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
        offsets = torch.tensor([rng.randint(0, 2 * pad), rng.randint(0, 2 * pad), rng.randint(0, 1), size])
        mask = torch.zeros(1, size, size)
        mask[0, y0:y0 + side, x0:x0 + side] = 1
        moved_mask = pad_crop_flip(mask, None, pad, offsets)[0][0]
        got = move_boxes(torch.tensor([[[x0, y0, x0 + side, y0 + side]]]), offsets[None], pad, size)[0, 0]
        gx0, gy0, gx1, gy1 = got.tolist()
        assert gx1 - gx0 == side == gy1 - gy0 and 0 <= gx0 and 0 <= gy0 and gx1 <= size and gy1 <= size
        ys, xs = torch.nonzero(moved_mask, as_tuple=True)
        if moved_mask.sum() == side * side:  # all of it in view: exactly the moved box
            assert [gx0, gy0, gx1, gy1] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        elif len(xs):  # partly in view (a small box can also leave the image altogether)
            clipped += 1
            assert (gx0 <= xs.min()) and (xs.max() < gx1) and (gy0 <= ys.min()) and (ys.max() < gy1)
    assert clipped > 20  # both cases were met
    with pytest.raises(ValueError, match="offsets"):
        move_boxes(torch.zeros(2, 3, 4, dtype=torch.int64), torch.zeros(3, 4, dtype=torch.int64), pad, size)


def test_boxes_grow_and_move_with_a_window_smaller_than_the_face():
    """crop_scale < 1 (open choice 21): the window of ``side`` pixels is resized to the face, so a
    box grows by size / side. The moved box against the moved mask (the masks' nearest-pixel
    resampling, `pad_crop_flip`): every edge within a pixel where the box stays in view, and the
    box always inside the image."""
    rng = random.Random(2)
    size, pad, checked = 32, 2, 0
    for _ in range(300):
        window = rng.randint(20, size)
        box = rng.randint(4, 18)
        x0, y0 = rng.randint(0, size - box), rng.randint(0, size - box)
        offsets = torch.tensor([rng.randint(0, size + 2 * pad - window), rng.randint(0, size + 2 * pad - window),
                                rng.randint(0, 1), window])
        mask = torch.zeros(1, size, size, dtype=torch.bool)
        mask[0, y0:y0 + box, x0:x0 + box] = True
        moved = pad_crop_flip(torch.zeros(3, size, size), mask, pad, offsets)[1][0]
        gx0, gy0, gx1, gy1 = move_boxes(torch.tensor([[[x0, y0, x0 + box, y0 + box]]]), offsets[None], pad,
                                        size)[0, 0].tolist()
        assert 0 <= gx0 < gx1 <= size and 0 <= gy0 < gy1 <= size
        ys, xs = torch.nonzero(moved, as_tuple=True)
        inside = (x0 + pad - offsets[1] >= 0 and y0 + pad - offsets[0] >= 0
                  and x0 + box + pad - offsets[1] <= window and y0 + box + pad - offsets[0] <= window)
        if inside:  # the whole box in the window: its edges where the mask's are, to a pixel
            checked += 1
            found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert (torch.tensor([gx0, gy0, gx1, gy1]) - found).abs().max() <= 1, (offsets, found, gx0, gy0)
            assert abs((gx1 - gx0) - box * size / window) <= 1
    assert checked > 100


def test_a_blobs_box_moves_as_the_box_found_on_the_moved_blob():
    """The box rule follows what the augmentation does, away from the image's edges: the box
    found on a shifted map is the box found before, moved; under a flip it is within a pixel
    (the rule rounds a centre down and takes the first of equal peaks, neither of which mirrors)."""
    rng = random.Random(1)
    size, pad = 32, 2
    for _ in range(50):
        cy, cx = rng.uniform(10, 22), rng.uniform(10, 22)
        yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(1.5, 3) ** 2))[None]
        offsets = torch.tensor([rng.randint(0, 2 * pad), rng.randint(0, 2 * pad), rng.randint(0, 1), size])
        moved = pad_crop_flip(blob, None, pad, offsets)[0]
        before = maps_to_boxes(blob[None], size, min_frac=0.1, max_frac=0.9)
        after = maps_to_boxes(moved[None], size, min_frac=0.1, max_frac=0.9)
        expected = move_boxes(before, offsets[None], pad, size)
        if offsets[2] == 0:
            assert torch.equal(expected, after)
        else:
            assert (expected - after).abs().max() <= 1 and torch.equal(expected[..., 2:] - expected[..., :2],
                                                                        after[..., 2:] - after[..., :2])


def _lower_median(values):
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


@pytest.mark.parametrize("faces", [1, 6, 7])
def test_rank_median_boxes_match_a_loop_reference(faces):
    """Each rank's box: the lower median of the N centres (x and y apart) and of the N sides, as a
    square of that side around that centre, rounded and shifted inside the image."""
    random.seed(faces)
    size, n = 32, 4
    boxes = []
    for _ in range(faces):
        face = []
        for _ in range(n):
            w, h = random.randint(3, 20), random.randint(3, 20)
            x0, y0 = random.randint(0, size - w), random.randint(0, size - h)
            face.append([x0, y0, x0 + w, y0 + h])
        boxes.append(face)
    boxes[0][0] = [0, 0, 20, 20]  # a corner box, so the shift inside the image is exercised when N = 1
    got = patches.rank_median_boxes(torch.tensor(boxes), size)
    assert got.dtype == torch.int64 and got.shape == (n, 4)
    for k in range(n):
        cx = _lower_median([(b[k][0] + b[k][2]) / 2 for b in boxes])
        cy = _lower_median([(b[k][1] + b[k][3]) / 2 for b in boxes])
        side = _lower_median([max(b[k][2] - b[k][0], b[k][3] - b[k][1]) for b in boxes])
        x0 = min(max(round(cx - side / 2), 0), size - side)
        y0 = min(max(round(cy - side / 2), 0), size - side)
        assert got[k].tolist() == [x0, y0, x0 + side, y0 + side], k
    with pytest.raises(ValueError, match=r"need boxes \(N >= 1, n, 4\)"):
        patches.rank_median_boxes(torch.zeros(0, n, 4, dtype=torch.int64), size)


def test_rank_median_boxes_of_one_box_everywhere_is_that_box():
    box = torch.tensor([[3, 5, 13, 15], [0, 20, 12, 32]])
    assert torch.equal(patches.rank_median_boxes(box.expand(9, -1, -1), 32), box)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
def test_jitter_boxes_shifts_each_box_by_its_draw_keeping_its_side(fraction):
    """jitter_boxes (recipe.box_jitter, open choice 22) against float64 loops on the same draws:
    each box moves by round(u · fraction · side) in x and in y, then back inside the image."""
    gen = torch.Generator().manual_seed(3)
    side = torch.randint(10, 39, (40, 5, 1), generator=gen)
    x0, y0 = torch.randint(0, S - 38, (40, 5, 1), generator=gen), torch.randint(0, S - 38, (40, 5, 1), generator=gen)
    boxes = torch.cat([x0, y0, x0 + side, y0 + side], dim=-1)
    got = patches.jitter_boxes(boxes, fraction, S, torch.Generator().manual_seed(7))
    u = torch.rand(40, 5, 2, generator=torch.Generator().manual_seed(7)).double() * 2 - 1
    check_valid(got, S, 10, 38)
    moved = 0
    for i, k in itertools.product(range(40), range(5)):
        bx0, by0, bx1, by1 = boxes[i, k].tolist()
        s = bx1 - bx0
        ex0, ey0 = bx0 + round(float(u[i, k, 0]) * fraction * s), by0 + round(float(u[i, k, 1]) * fraction * s)
        ex0, ey0 = min(max(ex0, 0), S - s), min(max(ey0, 0), S - s)
        assert got[i, k].tolist() == [ex0, ey0, ex0 + s, ey0 + s], (i, k)
        assert abs(ex0 - bx0) <= fraction * s + 0.5 and abs(ey0 - by0) <= fraction * s + 0.5
        moved += (ex0, ey0) != (bx0, by0)
    assert (moved > 150) == (fraction >= 0.1) and (moved == 0) == (fraction == 0)
