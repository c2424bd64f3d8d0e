"""From ranked attention maps to boxes to patches, and the fixed layout of the ``fixed_patches`` baseline.

The paper resizes each ranked map to the image size, "performs contour detection based on the
boundary" of the highlighted area and crops that area. The project's rule for this
(book/open_choices.md, choice 7) is made here, with two implementations that give the same
boxes:

1. resize the map to the image size (bilinear), then normalise it so that its peak is 1 and its
   ``baseline`` 0: with ``"median"`` (the default) the baseline is the map's median, the level
   of its background, and the pixels below it go negative; with ``"min"`` (the earlier rule)
   it is the map's minimum, a min-max normalisation to [0, 1];
2. threshold it at ``threshold`` (a value in [0, 1]) or, with ``"mean"``, at its spatial mean.
   The default, half way from the background to the peak (0.5 above the median), is the
   half-maximum of a blob on a background: min-max normalisation let one dark pixel decide
   the scale, and a map that is high almost everywhere with one low spot then kept most of
   the image above the mean or above 0.7 (``benchmarks/results/box-rule.md``);
3. keep the connected region (8-connected) of the thresholded mask that contains the map's
   peak (the first maximum in row-major order) and take its bounding box. ``method="cv2"``
   finds it with ``cv2.findContours`` (the outer contour that contains the peak, the smallest
   one when contours nest: the reference); ``method="torch"`` (the default, used in training)
   labels the mask's components on whatever device the maps are, all maps at once, in a fixed
   number of rounds that depends only on the image size, so it never waits on the host
   (``_component_labels``);
4. make the box square with side max(width, height) clamped to [min_frac, max_frac] · image
   size (patches are resized to a square, so a square box keeps the face's proportions),
   centred on the region, then shifted just enough to contain the peak and lie inside the image.

A map that is flat, all zero, or holds a NaN/inf has no region: its box is the largest allowed
square centred on the image.

An ADPF with ``config.patch_placement="rank_median"`` (book/open_choices.md, choice 19; not the
paper's) finds these boxes on its training faces once, after stage 1, and crops every face at
each rank's median box (`rank_median_boxes`).

Boxes are int64 ``(x0, y0, x1, y1)`` in image pixels with x1, y1 exclusive. Being
integers, crops pass no gradient to the attention maps (AttentionNet is frozen while
FusionNet trains, so none is needed; book/open_choices.md, choice 10).
"""
from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Square boxes of an eye-aligned face as (centre x, centre y, side), fractions of the image side,
# in the order the fixed_patches baseline feeds them (eyes first, as the most age-informative).
FACE_PARTS: dict[str, tuple[float, float, float]] = {
    "left eye": (0.32, 0.38, 0.30),
    "right eye": (0.68, 0.38, 0.30),
    "nose": (0.50, 0.55, 0.30),
    "mouth": (0.50, 0.76, 0.30),
    "forehead": (0.50, 0.16, 0.30),
    "left laugh line": (0.28, 0.66, 0.25),
    "right laugh line": (0.72, 0.66, 0.25),
    "chin": (0.50, 0.90, 0.20),
}


def _threshold_masks(maps: Tensor, image_size: int, threshold: float | str,
                     baseline: str = "median") -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1–2 for M maps ``(M, h, w)`` → masks ``(M, S, S)`` bool, peaks ``(M, 2)`` (y, x), flat ``(M,)`` bool."""
    m = maps.detach().float()
    finite = torch.isfinite(m).all(dim=(1, 2))
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    up = F.interpolate(m[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]
    hi = up.amax(dim=(1, 2))
    lo = up.flatten(1).median(dim=1).values if baseline == "median" else up.amin(dim=(1, 2))
    span = hi - lo
    flat = ~finite | (span <= 1e-5 * torch.maximum(hi.abs(), lo.abs()))
    norm = (up - lo[:, None, None]) / torch.where(flat, torch.ones_like(span), span)[:, None, None]
    level = norm.mean(dim=(1, 2)) if threshold == "mean" else torch.full_like(lo, float(threshold))
    masks = (norm >= level[:, None, None]) & ~flat[:, None, None]
    flat_index = norm.flatten(1).argmax(dim=1)
    peaks = torch.stack([flat_index // image_size, flat_index % image_size], dim=1)
    peaks = torch.where(flat[:, None], image_size // 2, peaks)
    masks = masks | flat[:, None, None]
    return masks, peaks, flat


def _block_graph(masks: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The 8-connected pixel graph of masks ``(M, S, S)`` bool (S even), reduced exactly to 2×2 blocks.

    The set pixels of a 2×2 block all touch one another, so a block is one node. Neighbouring
    blocks are joined when a set pixel of one touches a set pixel of the other: side by side
    when both have a set pixel in the facing columns (rows), diagonally when the two facing
    corner pixels are set. Returns the occupied blocks ``(M, s, s)`` (s = S/2) and the edges
    to the right ``(M, s, s-1)``, down ``(M, s-1, s)``, down-right and down-left ``(M, s-1, s-1)``.
    """
    tl, tr, bl, br = masks[:, 0::2, 0::2], masks[:, 0::2, 1::2], masks[:, 1::2, 0::2], masks[:, 1::2, 1::2]
    left, right, top, bottom = tl | bl, tr | br, tl | tr, bl | br
    edges = [right[:, :, :-1] & left[:, :, 1:],
             bottom[:, :-1] & top[:, 1:],
             br[:, :-1, :-1] & tl[:, 1:, 1:],  # bottom-right pixel, top-left pixel of the block below right
             bl[:, :-1, 1:] & tr[:, 1:, :-1]]  # bottom-left pixel, top-right pixel of the block below left
    return left | right, edges


def _neighbour_min(labels: Tensor, penalties: list[Tensor]) -> Tensor:
    """Each block's label ``(M, s, s)`` lowered to the smallest label of the blocks it is joined to.

    ``penalties`` are the edges of ``_block_graph`` as 0 (joined) or a number above every label.
    """
    out = labels.clone()
    all_ = slice(None)
    head, tail = slice(None, -1), slice(1, None)
    for penalty, (a, b) in zip(penalties, [((all_, head), (all_, tail)), ((head, all_), (tail, all_)),
                                          ((head, head), (tail, tail)), ((head, tail), (tail, head))]):
        here, there = out[(all_, *a)], out[(all_, *b)]
        torch.minimum(here, labels[(all_, *b)] + penalty, out=here)
        torch.minimum(there, labels[(all_, *a)] + penalty, out=there)
    return out


def label_rounds(image_size: int) -> int:
    """Rounds of ``_component_labels`` for masks of ``image_size``: ⌈log2(number of 2×2 blocks)⌉ + 1."""
    blocks = ((image_size + 1) // 2) ** 2
    return max(1, math.ceil(math.log2(blocks))) + 1


def _component_labels(masks: Tensor, rounds: int | None = None) -> Tensor:
    """Component labels of masks ``(M, S, S)`` bool, 8-connected: ``(M, S, S)`` int64.

    Each set pixel gets the smallest 2×2-block index (row-major, blocks of ``_block_graph``) of
    its component; unset pixels get the number of blocks. The labels are found by FastSV
    (Zhang, Azad & Hu, 2020), a min-label variant of Shiloach–Vishkin, on the block graph:
    every block points at a block of its component (its parent f, at first itself); each round
    takes the grandparents gf = f[f], the smallest grandparent among each block's neighbours
    (``_neighbour_min``), hooks the parent and the block itself onto it (scatter-min), keeps
    gf where smaller, and jumps once more (f = f[f]). A label only ever moves to another block
    of the same component, so even unsettled labels never join two components.

    The number of rounds is fixed (``label_rounds``), so no round waits to learn whether the
    labels have settled: pointer jumping halves path lengths each round, and on the slowest
    masks found (1-pixel-wide mazes, snakes along rows, columns and diagonals) the labels
    settle in at most 7 rounds at 64 px and 8 at 128 px, against the 11 and 13 run here.
    """
    m, size, _ = masks.shape
    if size % 2:
        masks = F.pad(masks, (0, 1, 0, 1))  # an empty last row and column: nothing joins them
    occupied, edges = _block_graph(masks)
    s = occupied.shape[-1]
    n = s * s
    above = n + 1  # larger than every label: an edge that does not exist
    penalties = [torch.where(e, 0, above).int() for e in edges]
    index = torch.arange(n, dtype=torch.int32, device=masks.device)
    parent = torch.where(occupied.flatten(1), index, n)  # (M, n); n: no block
    table = torch.full((m, n + 1), n, dtype=torch.int32, device=masks.device)  # parents, and n -> n
    for _ in range(label_rounds(size) if rounds is None else rounds):
        table[:, :n] = parent
        grand = table.gather(1, parent.long())
        lowest = _neighbour_min(grand.view(m, s, s), penalties).view(m, n)
        table.scatter_reduce_(1, parent.long(), lowest, reduce="amin")  # hook the parent
        parent = torch.minimum(torch.minimum(table[:, :n], lowest), grand)  # hook the block, shortcut
        table[:, :n] = parent
        parent = table.gather(1, parent.long())  # jump
    blocks = parent.view(m, s, 1, s, 1).expand(m, s, 2, s, 2).reshape(m, 2 * s, 2 * s)
    return torch.where(masks, blocks, n)[:, :size, :size].long()


def _region_boxes_torch(masks: Tensor, peaks: Tensor) -> Tensor:
    """Step 3 by component labels: bounding boxes ``(M, 4)`` of the 8-connected regions holding the peaks."""
    m, s, _ = masks.shape
    labels = _component_labels(masks).flatten(1)
    peak_label = labels.gather(1, (peaks[:, 0] * s + peaks[:, 1])[:, None])
    region = (labels == peak_label).view(m, s, s)
    rows, cols = region.any(dim=2), region.any(dim=1)  # (M, S): occupied y, occupied x

    def first_last(occupied: Tensor) -> tuple[Tensor, Tensor]:
        first = occupied.int().argmax(dim=1)
        last = s - 1 - occupied.flip(1).int().argmax(dim=1)
        return first, last + 1

    (y0, y1), (x0, x1) = first_last(rows), first_last(cols)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _region_boxes_cv2(masks: Tensor, peaks: Tensor) -> Tensor:
    """Step 3 by contour detection: the bounding rectangle of the outer contour holding the peak."""
    boxes = []
    for mask, (py, px) in zip(masks.cpu().numpy().astype(np.uint8), peaks.cpu().tolist()):
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        best = None
        for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
            if parent != -1 or cv2.pointPolygonTest(contour, (float(px), float(py)), False) < 0:
                continue  # a hole, or a region that does not hold the peak
            x, y, w, h = cv2.boundingRect(contour)
            if best is None or w * h < best[2] * best[3]:
                best = (x, y, w, h)
        x, y, w, h = best
        boxes.append([x, y, x + w, y + h])
    return torch.tensor(boxes, dtype=torch.int64, device=masks.device).reshape(-1, 4)


def _square_boxes(regions: Tensor, peaks: Tensor, image_size: int, min_side: int, max_side: int) -> Tensor:
    """Step 4: square boxes ``(M, 4)`` around the regions ``(M, 4)``, holding the peaks, inside the image."""
    x0, y0, x1, y1 = regions.unbind(dim=1)
    side = torch.maximum(x1 - x0, y1 - y0).clamp(min_side, max_side)

    def place(lo: Tensor, hi: Tensor, peak: Tensor) -> Tensor:
        start = torch.div(lo + hi - side, 2, rounding_mode="floor")
        start = torch.minimum(torch.maximum(start, peak - side + 1), peak)
        return torch.minimum(start.clamp_min(0), image_size - side)

    bx, by = place(x0, x1, peaks[:, 1]), place(y0, y1, peaks[:, 0])
    return torch.stack([bx, by, bx + side, by + side], dim=1)


def maps_to_boxes(maps: Tensor, image_size: int, threshold: float | Literal["mean"] = 0.5,
                  min_frac: float = 0.15, max_frac: float = 0.6,
                  method: Literal["torch", "cv2"] = "torch",
                  baseline: Literal["median", "min"] = "median") -> Tensor:
    """Boxes ``(B, n, 4)`` int64 (x0, y0, x1, y1), x1/y1 exclusive, from maps ``(B, n, h, w)``.

    Pass the maps already in ranked order (``maps[:, order]``) so box k is patch P_k. See the
    module docstring for the rule; ``method`` only picks how step 3 is computed.
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, n, h, w), got shape {tuple(maps.shape)}")
    if threshold != "mean" and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise ValueError(f"threshold must be 'mean' or a number in [0, 1], got {threshold!r}")
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    if baseline not in ("median", "min"):
        raise ValueError(f"baseline must be 'median' or 'min', got {baseline!r}")
    b, n, h, w = maps.shape
    masks, peaks, _ = _threshold_masks(maps.reshape(b * n, h, w), image_size, threshold, baseline)
    if method == "torch":
        regions = _region_boxes_torch(masks, peaks)
    elif method == "cv2":
        regions = _region_boxes_cv2(masks, peaks)
    else:
        raise ValueError(f"method must be 'torch' or 'cv2', got {method!r}")
    min_side = max(1, round(min_frac * image_size))
    max_side = max(min_side, round(max_frac * image_size))
    return _square_boxes(regions, peaks, image_size, min_side, max_side).reshape(b, n, 4)


def rank_median_boxes(boxes: Tensor, image_size: int) -> Tensor:
    """Each rank's median box ``(n, 4)`` over many faces' boxes ``(N, n, 4)``.

    For rank k: the median centre (x and y apart) and the median side of the N boxes P_k (the
    lower median, ``torch.median``'s, when N is even), as a square of that side centred there,
    rounded to whole pixels and shifted inside the image. ``config.patch_placement=
    "rank_median"`` crops every face at these boxes (book/open_choices.md, choice 19).
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or len(boxes) == 0:
        raise ValueError(f"need boxes (N >= 1, n, 4), got shape {tuple(boxes.shape)}")
    boxes = boxes.double()
    centre = ((boxes[..., :2] + boxes[..., 2:]) / 2).median(dim=0).values  # (n, 2): x, y
    side = torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]).median(dim=0).values  # (n,)
    start = torch.minimum((centre - side[:, None] / 2).round().clamp_min(0), image_size - side[:, None])
    return torch.cat([start, start + side[:, None]], dim=1).long()


def move_boxes(boxes: Tensor, offsets: Tensor, pad: int, image_size: int) -> Tensor:
    """Boxes found on faces before the augmentation, moved as ``pad_crop_flip`` moved the faces.

    Stage 2 with ``recipe.fusion_boxes="once"`` finds every training face's boxes once, on the
    face as stored, and moves them with each draw of the augmentation (book/open_choices.md,
    choice 17). A box edge at e pixels of the stored face is at (e + pad - top) · S / side in the
    augmented one (S = ``image_size``, the window of ``side`` pixels resized to S; rounded to the
    nearest pixel, exactly e + pad - top for the paper's windows of side S), mirrored to S - e
    when flip is 1; a box that then sticks out of the image is shifted back inside, keeping its
    side (as step 4 places every box), and one larger than the image is cut to it.

    Args:
        boxes: ``(B, n, 4)`` int64 (x0, y0, x1, y1), x1/y1 exclusive.
        offsets: ``(B, 4)`` int64 (top, left, flip, side) as ``adpf.data.prepared.draw_offsets`` draws them.
    Returns:
        ``(B, n, 4)`` int64 on the boxes' device.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or offsets.shape != (boxes.shape[0], 4):
        raise ValueError(f"need boxes (B, n, 4) and offsets (B, 4), got {tuple(boxes.shape)} and "
                         f"{tuple(offsets.shape)}")
    offsets = offsets.to(boxes.device)
    top, left, flip, side = (offsets[:, i:i + 1] for i in range(4))  # (B, 1) each

    def scaled(edge: Tensor, start: Tensor) -> Tensor:  # round((edge + pad - start) · S / side), in integers
        return torch.div(2 * (edge + pad - start) * image_size + side, 2 * side, rounding_mode="floor")

    x0, y0, x1, y1 = boxes.unbind(dim=-1)  # (B, n) each
    x0, x1, y0, y1 = scaled(x0, left), scaled(x1, left), scaled(y0, top), scaled(y1, top)
    x0, x1 = torch.where(flip.bool(), image_size - x1, x0), torch.where(flip.bool(), image_size - x0, x1)
    x1, y1 = x0 + (x1 - x0).clamp_max(image_size), y0 + (y1 - y0).clamp_max(image_size)
    return shifted_inside(x0, y0, x1, y1, image_size)


def shifted_inside(x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor, image_size: int) -> Tensor:
    """Boxes no larger than the image, each shifted (keeping its side) to lie inside it:
    ``(..., 4)`` int64 (x0, y0, x1, y1) from four ``(...)`` edge tensors."""
    dx = (-x0).clamp_min(0) - (x1 - image_size).clamp_min(0)
    dy = (-y0).clamp_min(0) - (y1 - image_size).clamp_min(0)
    return torch.stack([x0 + dx, y0 + dy, x1 + dx, y1 + dy], dim=-1)


def jitter_boxes(boxes: Tensor, fraction: float, image_size: int, generator: torch.Generator) -> Tensor:
    """Every box shifted by a random whole number of pixels, then back inside the image.

    The box jitter of stage 2 (``recipe.box_jitter``, book/open_choices.md, choice 22; not the
    paper's): each box moves by round(u · fraction · side) pixels in x and in y, u uniform in
    [-1, 1) drawn apart for each box and axis, keeping its side.

    Args:
        boxes: ``(B, n, 4)`` int64 (x0, y0, x1, y1), x1/y1 exclusive, inside the image.
        generator: on the boxes' device.
    Returns:
        ``(B, n, 4)`` int64.
    """
    x0, y0, x1, y1 = boxes.unbind(dim=-1)  # (B, n) each
    u = torch.rand(*boxes.shape[:-1], 2, generator=generator, device=boxes.device) * 2 - 1  # (B, n, 2)
    dx = torch.round(u[..., 0] * fraction * (x1 - x0)).long()
    dy = torch.round(u[..., 1] * fraction * (y1 - y0)).long()
    return shifted_inside(x0 + dx, y0 + dy, x1 + dx, y1 + dy, image_size)


def crop_patches(images: Tensor, boxes: Tensor, patch_size: int) -> Tensor:
    """Crop every box from its image and resize it bilinearly to ``patch_size`` (``F.grid_sample``).

    Args:
        images: ``(B, C, H, W)``.
        boxes: ``(B, n, 4)`` (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
    Returns:
        ``(B, n, C, patch_size, patch_size)``; a box of exactly ``patch_size`` pixels is copied
        unchanged.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != images.shape[0]:
        raise ValueError(f"boxes must be (B={images.shape[0]}, n, 4), got shape {tuple(boxes.shape)}")
    b, c, height, width = images.shape
    n = boxes.shape[1]
    x0, y0, x1, y1 = boxes.to(images.dtype).unbind(dim=-1)  # (B, n) each
    # pixel edge x maps to -1 + 2x/W in align_corners=False coordinates
    theta = torch.zeros(b * n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = ((x1 - x0) / width).flatten()
    theta[:, 0, 2] = ((x0 + x1) / width - 1).flatten()
    theta[:, 1, 1] = ((y1 - y0) / height).flatten()
    theta[:, 1, 2] = ((y0 + y1) / height - 1).flatten()
    grid = F.affine_grid(theta, [b * n, c, patch_size, patch_size], align_corners=False)
    grid = grid.reshape(b, n * patch_size, patch_size, 2)  # all of an image's patches in one grid
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(b, c, n, patch_size, patch_size).transpose(1, 2)


def fixed_boxes(n: int, image_size: int) -> Tensor:
    """The ``fixed_patches`` baseline's boxes ``(n, 4)``: the first n of ``FACE_PARTS``, the same in every image."""
    if not 1 <= n <= len(FACE_PARTS):
        raise ValueError(f"fixed_boxes has {len(FACE_PARTS)} face parts; n={n} is out of range")
    boxes = []
    for cx, cy, frac in list(FACE_PARTS.values())[:n]:
        side = max(1, round(frac * image_size))
        x0 = min(max(round(cx * image_size - side / 2), 0), image_size - side)
        y0 = min(max(round(cy * image_size - side / 2), 0), image_size - side)
        boxes.append([x0, y0, x0 + side, y0 + side])
    return torch.tensor(boxes, dtype=torch.int64)
