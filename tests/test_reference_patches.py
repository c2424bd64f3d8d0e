"""The loop references of the maps → boxes → patches rule and of the maps the losses read: on
cases worked by hand, and the library against them (what chapter 8 shows)."""
import math

import pytest
import torch
import torch.nn.functional as F

from adpf import reference
from adpf.patches import crop_patches, maps_to_boxes

D = torch.float64


def test_the_references_on_cases_worked_by_hand():
    assert reference.bilinear_resize([[0.0, 1.0]], 4).tolist() == [[0.0, 0.25, 0.75, 1.0]] * 4
    blobs = [[0.0] * 8 for _ in range(8)]  # at its own size: resizing leaves it as it is
    for y, x in ((2, 5), (2, 6), (3, 5), (3, 6)):
        blobs[y][x] = 1.0
    blobs[6][0] = 0.5  # above the mean too, but not joined to the peak's region
    assert reference.bilinear_resize(blobs, 8).tolist() == blobs
    assert reference.map_box(blobs, 8, min_frac=0.25, max_frac=1.0) == [5, 2, 7, 4]
    assert reference.map_box(blobs, 8, min_frac=0.5, max_frac=1.0) == [4, 1, 8, 5]  # grown to 4 px, centred
    assert reference.map_box([[2.0, 2.0], [2.0, 2.0]], 8, 0.25, 0.5) == [2, 2, 6, 6]  # flat: largest, centred
    image = torch.arange(16, dtype=D).reshape(1, 4, 4)
    assert torch.equal(reference.crop_patch(image, [0, 0, 4, 4], 4), image)  # the whole image at its size
    assert reference.crop_patch(image, [0, 0, 4, 4], 2).tolist() == [[[2.5, 4.5], [10.5, 12.5]]]  # 2x2 means
    order, ranked = reference.ranked_maps(torch.ones(1, 3, 1, 1), [0.5, -2.0, 0.5], "value")
    assert order == [0, 2, 1] and ranked.flatten().tolist() == [1.0, 1.0, -1.0]  # ties keep head order
    assert reference.ranked_maps(torch.ones(1, 3, 1, 1), [0.5, -2.0, 0.0], "abs")[0] == [1, 0, 2]
    maps = torch.tensor([[[[1.0, 3.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    assert reference.unit_maps(maps)[0].tolist() == [[[0.0, 1.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]]
    assert reference.normalize_maps(maps)[0, 1].tolist() == [[0.25, 0.25], [0.25, 0.25]]
    assert reference.head_similarity(maps).tolist() == [[1.0, 0.5], [0.5, 1.0]]
    assert reference.age_std([[0.5, 0.0, 0.5]], [10.0, 20.0, 30.0]).tolist() == [10.0]
    assert reference.age_std([[0.25, 0.5, 0.25]], [10.0, 20.0, 30.0]).item() == pytest.approx(math.sqrt(50))


@pytest.mark.parametrize("h,size", [(4, 16), (3, 20), (8, 32)])
def test_bilinear_resize_is_torchs_half_pixel_interpolation(h, size):
    m = torch.randn(h, h + 1, dtype=D, generator=torch.Generator().manual_seed(h))
    expected = F.interpolate(m[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(reference.bilinear_resize(m, size), expected, rtol=1e-12, atol=1e-12)


def smooth_maps(n, h, seed):
    """n maps (n, h, h) of a few Gaussian blobs and noise: regions of several sizes, some split.

    The blobs are centred inside the border ring, so the peak is not on the first or last row
    or column: there the border clamp repeats it at the larger size, the float32 library rounds
    the repeats apart by an ulp, and its first maximum can fall on the repeat, a box one pixel
    away from the float64 loops' (a difference of rounding, not of the rule)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=D), torch.arange(h, dtype=D), indexing="ij")
    maps = 0.05 * torch.randn(n, h, h, dtype=D, generator=g)
    for _ in range(3):
        cy, cx = 1.5 + torch.rand(2, n, 1, 1, dtype=D, generator=g) * (h - 4)
        width = 0.5 + torch.rand(n, 1, 1, dtype=D, generator=g) * h / 3
        maps += torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * width ** 2))
    return maps


@pytest.mark.parametrize("method", ["torch", "cv2"])
@pytest.mark.parametrize("threshold,baseline", [("mean", "min"), (0.3, "min"), (0.5, "median"), ("mean", "median")])
def test_maps_to_boxes_gives_exactly_the_boxes_of_the_loops(method, threshold, baseline):
    noise = torch.randn(6, 8, 8, dtype=D, generator=torch.Generator().manual_seed(2))
    noise[:, 1:-1, 1:-1] += 0.5  # scattered regions, the peak inside the border ring (see smooth_maps)
    maps = torch.cat([smooth_maps(10, 8, seed=1), noise, torch.full((1, 8, 8), 3.0, dtype=D),
                      -smooth_maps(1, 8, seed=3)])
    size, min_frac, max_frac = 32, 0.15, 0.6
    got = maps_to_boxes(maps[None], size, threshold, min_frac, max_frac, method=method, baseline=baseline)[0]
    expected = torch.tensor([reference.map_box(m, size, min_frac, max_frac, threshold, baseline) for m in maps])
    assert torch.equal(got, expected)


def test_crop_patches_reads_the_pixels_the_loops_read():
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 20, 20, dtype=D, generator=g)
    boxes = torch.tensor([[[0, 0, 20, 20], [3, 5, 11, 13]], [[12, 12, 20, 20], [1, 9, 8, 16]]])
    got = crop_patches(images, boxes, 6)
    for b in range(2):
        for k in range(2):
            torch.testing.assert_close(got[b, k], reference.crop_patch(images[b], boxes[b, k], 6),
                                       rtol=1e-12, atol=1e-12)
