"""From ranked attention maps to boxes to patches, and the fixed layout of the ``fixed_patches`` baseline.

The paper resizes each ranked map to the image size, "performs contour detection based on the
boundary" of the highlighted area and crops that area. Open choice 7 is made here, as one rule
with two implementations that give the same boxes:

1. resize the map to the image size (bilinear), then min-max normalise it to [0, 1];
2. threshold it at ``threshold`` (a value in [0, 1]) or, with ``"mean"``, at its spatial mean;
3. keep the connected region (8-connected) of the thresholded mask that contains the map's
   peak (the first maximum in row-major order) and take its bounding box. ``method="cv2"``
   finds it with ``cv2.findContours`` (the outer contour that contains the peak, the smallest
   one when contours nest); ``method="torch"`` floods the mask from the peak (3×3 max pooling
   and run filling), on whatever device the maps are (the default, used in training);
4. make the box square with side max(width, height) clamped to [min_frac, max_frac] · image
   size (patches are resized to a square, so a square box keeps the face's proportions),
   centred on the region, then shifted just enough to contain the peak and lie inside the image.

A map that is flat, all zero, or holds a NaN/inf has no region: its box is the largest allowed
square centred on the image.

Boxes are int64 ``(x0, y0, x1, y1)`` in image pixels with x1, y1 exclusive. Open choice 10:
boxes are integers, so crops pass no gradient to the attention maps (AttentionNet is frozen
while FusionNet trains, so none is needed).
"""
from __future__ import annotations

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


def _threshold_masks(maps: Tensor, image_size: int, threshold: float | str) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1–2 for M maps ``(M, h, w)`` → masks ``(M, S, S)`` bool, peaks ``(M, 2)`` (y, x), flat ``(M,)`` bool."""
    m = maps.detach().float()
    finite = torch.isfinite(m).all(dim=(1, 2))
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    up = F.interpolate(m[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2)), up.amax(dim=(1, 2))
    span = hi - lo
    flat = ~finite | (span <= 1e-5 * torch.maximum(hi.abs(), lo.abs()))
    norm = (up - lo[:, None, None]) / torch.where(flat, torch.ones_like(span), span)[:, None, None]
    level = norm.mean(dim=(1, 2)) if threshold == "mean" else torch.full_like(lo, float(threshold))
    masks = (norm >= level[:, None, None]) & ~flat[:, None, None]
    flat_index = norm.flatten(1).argmax(dim=1)
    peaks = torch.stack([flat_index // image_size, flat_index % image_size], dim=1)
    peaks[flat] = image_size // 2
    masks[flat] = True
    return masks, peaks, flat


def _fill_runs(region: Tensor, mask: Tensor) -> Tensor:
    """Grow ``region`` ``(M, S, S)`` bool to every run of consecutive ``mask`` pixels along x it touches."""
    starts = mask.clone()
    starts[..., 1:] &= ~mask[..., :-1]
    run = starts.cumsum(dim=-1)  # run index of each pixel within its row
    touched = torch.zeros(*mask.shape[:-1], mask.shape[-1] + 1, dtype=torch.int32, device=mask.device)
    touched.scatter_add_(-1, run, (region & mask).int())
    return (touched.gather(-1, run) > 0) & mask


def _dilate(region: Tensor) -> Tensor:
    """3×3 binary dilation of ``(M, S, S)`` bool (each pixel joins its 8 neighbours)."""
    tall = region.clone()
    tall[:, 1:] |= region[:, :-1]
    tall[:, :-1] |= region[:, 1:]
    wide = tall.clone()
    wide[:, :, 1:] |= tall[:, :, :-1]
    wide[:, :, :-1] |= tall[:, :, 1:]
    return wide


def _region_boxes_torch(masks: Tensor, peaks: Tensor) -> Tensor:
    """Step 3 by flood fill: bounding boxes ``(M, 4)`` of the 8-connected regions holding the peaks.

    Each round dilates the region by one pixel inside the mask, then fills whole runs of the
    mask along rows and along columns, so a round crosses a region in a straight line at once;
    rounds repeat, on the maps still growing, until nothing changes.
    """
    m, s, _ = masks.shape
    region = torch.zeros_like(masks)
    region[torch.arange(m, device=masks.device), peaks[:, 0], peaks[:, 1]] = True
    active = torch.arange(m, device=masks.device)
    while len(active):
        grown, mask = region[active], masks[active]
        new = _dilate(grown) & mask
        new = _fill_runs(new, mask)
        new = _fill_runs(new.transpose(1, 2), mask.transpose(1, 2)).transpose(1, 2)
        region[active] = new
        active = active[(new != grown).flatten(1).any(dim=1)]
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


def maps_to_boxes(maps: Tensor, image_size: int, threshold: float | Literal["mean"] = "mean",
                  min_frac: float = 0.15, max_frac: float = 0.6,
                  method: Literal["torch", "cv2"] = "torch") -> Tensor:
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
    b, n, h, w = maps.shape
    masks, peaks, _ = _threshold_masks(maps.reshape(b * n, h, w), image_size, threshold)
    if method == "torch":
        regions = _region_boxes_torch(masks, peaks)
    elif method == "cv2":
        regions = _region_boxes_cv2(masks, peaks)
    else:
        raise ValueError(f"method must be 'torch' or 'cv2', got {method!r}")
    min_side = max(1, round(min_frac * image_size))
    max_side = max(min_side, round(max_frac * image_size))
    return _square_boxes(regions, peaks, image_size, min_side, max_side).reshape(b, n, 4)


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
