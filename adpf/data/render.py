"""The renderer of the synthetic faces: a person's picture and the masks of their age regions.

Each person is first drawn once in a canonical frame (`draw_people`: the base picture, one
layer per wrinkle line of `adpf.data.aging`, the decoy layers and the region masks); each of
their images then mixes those layers with its own age and decoy strengths (one matrix
product), and the same ``cv2.warpAffine`` puts picture and masks in its pose, so a region's
mask moves exactly with its texture (`render_images`).

Decoy textures that do **not** depend on age sit outside the age regions: freckles on the
cheeks, stripes on the clothes, waves on the background.

Drawing is fast (10,000 faces of 128×128 in about 7 s of one CPU core): a few people are drawn
at once, each shape only inside its bounding box, left-right symmetric shapes on one half and
mirrored, all in float32; the background and the lighting of an image are sums of products of
a function of y and a function of x, so one small matrix product draws each
(`image_frames`, ``benchmarks/synthetic_speed.py``).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from adpf.data.aging import N_LINES, line_weights, region_strength

# A few people are drawn at once: each of their parameters is an array ``(n, 1, 1)`` (colours
# and other vectors ``(n, k)``) and each shape is computed only in the box that holds it for all
# of them, so one numpy call serves n people.


@dataclass(frozen=True)
class _Box:
    """A rectangle of pixels and the coordinates of their centres."""

    rows: slice
    cols: slice
    x: np.ndarray  # (1, w)
    y: np.ndarray  # (h, 1)

    @property
    def at(self) -> tuple:
        """Index of the box in the last two axes."""
        return ..., self.rows, self.cols


@dataclass(frozen=True)
class Grid:
    """Pixel centres ``t`` ``(S,)`` in [-1, 1] (+x to the right, +y downwards), exactly
    mirror-symmetric about the centre, so a left-right symmetric shape can be drawn on the
    right half and mirrored."""

    size: int
    t: np.ndarray

    @property
    def px(self) -> float:
        return 2.0 / self.size

    def box(self, x0, x1, y0, y1, right: bool = False) -> _Box:
        """The pixels with centres in [x0, x1] × [y0, y1] for every person (bounds are scalars
        or arrays), one pixel more on every side; ``right``: only those of the right half (the
        centre column included)."""
        rows, cols = self._span(np.min(y0), np.max(y1)), self._span(np.min(x0), np.max(x1))
        if right:
            cols = slice(max(cols.start, self.size // 2), max(cols.stop, self.size // 2))
        return _Box(rows, cols, self.t[None, cols], self.t[rows, None])

    def ellipse_extent(self, cx, cy, rx, ry) -> tuple:
        """``(x0, x1, y0, y1)``: where `_ellipse` is not 0."""
        grow = 1 + 0.5 * self.px / np.minimum(rx, ry)
        return cx - rx * grow, cx + rx * grow, cy - ry * grow, cy + ry * grow

    def band(self, rows: slice) -> _Box:
        """All columns of ``rows``."""
        return _Box(rows, slice(0, self.size), self.t[None, :], self.t[rows, None])

    def sides(self, box: _Box, values: np.ndarray) -> list[tuple[tuple, np.ndarray]]:
        """``values`` ``(..., h, w)`` on a right-half box and mirrored on the left:
        ``[(at, values)]`` (the centre column of an odd size is not mirrored onto itself)."""
        skip = max(box.cols.start, (self.size + 1) // 2) - box.cols.start
        mirror = slice(self.size - box.cols.stop, self.size - box.cols.start - skip)
        return [(box.at, values), ((..., box.rows, mirror), values[..., skip:][..., ::-1])]

    def _span(self, lo: float, hi: float) -> slice:
        start = max(0, math.floor((lo + 1) * self.size / 2 - 0.5))
        stop = min(self.size, math.ceil((hi + 1) * self.size / 2 - 0.5) + 1)
        return slice(start, max(start, stop))


def make_grid(size: int) -> Grid:
    t = (np.arange(size) + 0.5) / size * 2 - 1
    return Grid(size, ((t - t[::-1]) / 2).astype(np.float32))


def _ellipse(b: _Box, cx, cy, rx, ry, px: float) -> np.ndarray:
    """Anti-aliased coverage of an ellipse over the box ``b``, ``(n, h, w)`` in [0, 1]."""
    rho = np.sqrt(((b.x - cx) / rx) ** 2 + ((b.y - cy) / ry) ** 2)
    return np.clip((1 - rho) * (np.minimum(rx, ry, dtype=np.float32) / px) + 0.5, 0, 1)


def _line(d, width) -> np.ndarray:
    """Profile of a line at signed distance ``d``."""
    return np.exp(-0.5 * (d / width) ** 2)


def _taper(inside_dist, margin) -> np.ndarray:
    """1 deep inside a region, falling to 0 at its border (``inside_dist`` > 0 inside)."""
    return np.clip(inside_dist / margin, 0, 1)


def _segment_distance(x, y, ax, ay, bx, by):
    """Distance to the segment A→B."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - ax - t * dx, y - ay - t * dy)


class _Canvas:
    """n people's pictures in the canonical frame, ``rgba`` ``(n, 4, S, S)`` (colour
    premultiplied by alpha). Symmetric shapes are computed on the right half and mirrored."""

    def __init__(self, g: Grid, n: int):
        self.g, self.n = g, n
        self.rgba = np.zeros((n, 4, g.size, g.size), np.float32)

    def paint(self, b: _Box, color, a: np.ndarray, mirror: bool = True) -> None:
        """Paint ``color`` ``(3,)`` or ``(n, 3)`` with coverage ``a`` ``(n, h, w)`` over the box."""
        color = np.concatenate([np.broadcast_to(np.float32(color), (self.n, 3)),
                                np.ones((self.n, 1), np.float32)], 1)[:, :, None, None]
        a = np.broadcast_to(a, (self.n, *a.shape[-2:]))
        for at, cover in self.g.sides(b, a) if mirror else [(b.at, a)]:
            view = self.rgba[at]
            view += cover[:, None] * (color - view)

    def ellipse(self, color, cx, cy, rx, ry) -> None:
        b = self.g.box(*self.g.ellipse_extent(cx, cy, rx, ry), right=True)
        self.paint(b, color, _ellipse(b, cx, cy, rx, ry, self.g.px))

    def darken(self, b: _Box, factor: np.ndarray, mirror: bool = True) -> None:
        """Multiply the colour in the box by ``factor`` ``(n, h, w)``."""
        for (_, rows, cols), f in self.g.sides(b, factor) if mirror else [(b.at, factor)]:
            self.rgba[:, :3, rows, cols] *= f[:, None]

    def place(self, b: _Box, values: np.ndarray) -> np.ndarray:
        """``values`` ``(n, h, w)`` on the box and its mirror, 0 elsewhere: ``(n, S, S)``."""
        out = np.zeros((self.n, self.g.size, self.g.size), values.dtype)
        values = np.broadcast_to(values, (self.n, *values.shape[-2:]))
        for at, v in self.g.sides(b, values):
            out[at] = v
        return out


@dataclass
class People:
    """n people in the canonical frame, what `render_images` mixes per image: ``rgba``
    ``(n, 4, S, S)`` (colour premultiplied by alpha), the region ``masks`` ``(n, R, S, S)`` bool
    and the shade layers in boxes, ``[(at, columns, (n, K, h, w))]``: K layers on the pixels
    ``at``, weighted by the image's weights ``columns`` (one layer per wrinkle line as in
    `line_weights`, then the cheek freckles, then the clothes stripes)."""

    rgba: np.ndarray
    masks: np.ndarray
    layers: list[tuple[tuple, slice, np.ndarray]]

    def shade(self, person: int, weights: np.ndarray, out: np.ndarray) -> np.ndarray:
        """What the layers of a person's images multiply the colour by, ``out`` ``(m, S, S)``,
        from the images' weights ``(m, L + 2)``."""
        out.fill(1)
        for at, columns, layers in self.layers:
            layers = layers[person]
            out[at] -= (weights[:, columns] @ layers.reshape(len(layers), -1)).reshape(len(out), *layers.shape[1:])
        return out


def draw_people(p: dict[str, np.ndarray], g: Grid) -> People:
    """The canonical pictures of n people and their layers (parameters ``(n,)`` or ``(n, k)`` by name, as
    `adpf.data.synthetic` draws them)."""
    p = {k: v.astype(np.float32)[:, None, None] if v.ndim == 1 else v.astype(np.float32) for k, v in p.items()}
    px, c = g.px, _Canvas(g, len(p["face_w"]))
    cy, fw, fh = 0.05, p["face_w"], p["face_h"]
    geo = {"brow_y": p["eye_y"] - p["brow_up"], "nose_y": p["eye_y"] + p["nose_len"]}
    geo["mouth_y"] = geo["nose_y"] + p["mouth_gap"]

    cb = g.box(*g.ellipse_extent(0, 1.28, 0.95, 0.52), right=True)
    clothes = c.place(cb, _ellipse(cb, 0, 1.28, 0.95, 0.52, px))
    c.paint(cb, p["clothes"], clothes[cb.at])
    b = g.box(0, p["neck_w"] + px, cy, 1, right=True)
    c.paint(b, p["skin"] * 0.85, np.clip((p["neck_w"] - b.x) / px + 0.5, 0, 1) * (b.y > cy))
    rx, ry = fw * p["hair_vol"], fh * p["hair_vol"] * 0.95
    x0, x1, y0, y1 = g.ellipse_extent(0, cy - 0.06, rx, ry)
    hb = g.box(x0, x1, y0, np.minimum(y1, p["hair_len"] + px), right=True)
    hair_back = _ellipse(hb, 0, cy - 0.06, rx, ry, px) * np.clip((p["hair_len"] - hb.y) / px + 0.5, 0, 1)
    c.paint(hb, p["hair"], hair_back)

    grow = 1 + px / fw
    fb = g.box(0, fw * grow, cy - fh * grow, cy + fh * grow, right=True)
    half_w = fw * (1 - p["jaw"] * np.clip((fb.y - cy) / fh, 0, 1) ** 2)
    rho = np.sqrt((fb.x / half_w) ** 2 + ((fb.y - cy) / fh) ** 2)
    face = np.clip((1 - rho) * (fw / px) + 0.5, 0, 1)
    c.paint(fb, p["skin"], face)
    c.darken(fb, 1 - 0.18 * np.clip(rho, 0, 1) ** 4 * face)  # rounded shading

    ex, ey, ew, eh = p["eye_dx"], p["eye_y"], p["eye_w"], p["eye_h"]
    c.ellipse(p["skin"] * 0.35, ex, ey, ew * 1.08, eh * 1.2)
    c.ellipse((0.94, 0.93, 0.90), ex, ey, ew, eh)
    c.ellipse(p["iris"], ex, ey, eh * 0.95, eh * 0.95)
    c.ellipse((0.03, 0.03, 0.03), ex, ey, eh * 0.42, eh * 0.42)
    by, bt, brx = geo["brow_y"], p["brow_t"], ew * 1.25
    x0, x1, y0, y1 = g.ellipse_extent(ex, by, brx, bt)
    b = g.box(x0, x1, y0, y1 + 0.035 * ((x1 - ex) / ew) ** 2, right=True)
    arch = 0.035 * ((b.x - ex) / ew) ** 2  # the brow bends down towards its ends
    c.paint(b, p["hair"] * 0.8, _ellipse(b, ex, by + arch, brx, bt, px))

    ny, nw = geo["nose_y"], p["nose_w"]
    b = g.box(0.6 * nw - 0.12, 0.6 * nw + 0.12, ey, ny)  # one-sided; beyond 0.12 it rounds to 1
    side = _line(b.x - 0.6 * nw, 0.02) * np.clip((b.y - ey) / 0.05, 0, 1) * (b.y < ny)
    c.darken(b, 1 - 0.12 * side, mirror=False)
    c.ellipse(p["skin"] * 0.4, 0.5 * nw, ny, 0.028, 0.014)
    my, mw = geo["mouth_y"], p["mouth_w"]
    lips = np.clip(p["skin"] * 0.75 + np.float32([0.2, 0.0, 0.02]), 0, 1)
    b = g.box(*g.ellipse_extent(0, my, mw, 0.032), right=True)
    mouth = _ellipse(b, 0, my, mw, 0.032, px)
    c.paint(b, lips, mouth)
    c.paint(b, lips * 0.45, _line(b.y - my, 0.006) * mouth)

    rx, ry = fw * 1.06, fh * 1.02
    x0, x1, y0, y1 = g.ellipse_extent(0, cy - 0.02, rx, ry)
    tb = g.box(x0, x1, y0, np.minimum(y1, p["hairline"] + 0.05 * (x1 / fw) ** 2 + px), right=True)
    hairline = p["hairline"] + 0.05 * (tb.x / fw) ** 2
    fringe = np.clip((hairline - tb.y) / px + 0.5, 0, 1) * _ellipse(tb, 0, cy - 0.02, rx, ry, px)
    c.paint(tb, p["hair"], fringe)
    fringe, hair_back, face = c.place(tb, fringe), c.place(hb, hair_back), c.place(fb, face)
    hair = g.band(slice(min(tb.rows.start, hb.rows.start), max(tb.rows.stop, hb.rows.stop)))
    strands = 1 + 0.12 * np.sin(70 * hair.x + 8 * hair.y)
    on_hair = np.maximum(fringe[hair.at], hair_back[hair.at] * (1 - face[hair.at])) > 0.5
    c.darken(hair, np.where(on_hair, strands, np.float32(1)), mirror=False)

    layers, masks = _wrinkle_layers(p, g, geo)
    masks &= ((face > 0.5) & (fringe < 0.5))[:, None]
    b = g.box(*g.ellipse_extent(ex + 0.06, ny + 0.01, 0.09, 0.07), right=True)
    free = ~masks.any(1)
    for at, a in g.sides(b, _ellipse(b, ex + 0.06, ny + 0.01, 0.09, 0.07, px)):
        freckles = a * free[at] * _spots(p, g.t[None, at[2]], g.t[at[1], None])
        layers.append((at, slice(N_LINES, N_LINES + 1), freckles[:, None]))
    band = g.band(cb.rows)
    stripes = np.sin(p["stripe_f"] * (band.x * np.cos(p["stripe_a"]) + band.y * np.sin(p["stripe_a"])) + p["stripe_p"])
    layers.append((band.at, slice(N_LINES + 1, N_LINES + 2), (clothes[band.at] * stripes)[:, None]))
    return People(c.rgba, masks, layers)


def _spots(p: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The freckle pattern (a decoy), ``(n, h, w)`` in [0, 1]."""
    u = x * np.cos(p["spot_a"]) + y * np.sin(p["spot_a"])
    v = -x * np.sin(p["spot_a"]) + y * np.cos(p["spot_a"])
    phase = p["spot_p"][:, :, None, None]
    wave = np.sin(p["spot_f"] * u + phase[:, 0]) * np.sin(p["spot_f"] * v + phase[:, 1])
    return np.clip((wave - 0.55) / 0.45, 0, 1)


def _wrinkle_layers(p: dict, g: Grid, geo: dict) -> tuple[list[tuple[tuple, slice, np.ndarray]], np.ndarray]:
    """The wrinkle lines in the canonical frame: layers in boxes (as `People.layers`), one per
    line in `line_weights` order, and the region masks ``(n, R, S, S)`` bool."""
    w = max(0.008, 0.5 * g.px)
    ex, ey, ew, eh = p["eye_dx"], p["eye_y"], p["eye_w"], p["eye_h"]
    regions = []  # (box, mirrored, [(n, h, w) layers], (n, h, w) mask)

    # crow's feet: lines fanning out of the outer eye corners
    cx, cy = ex + ew + 0.015, ey
    b = g.box(cx - 0.01, cx + 0.14, cy - 0.1, cy + 0.1, right=True)
    x, y = b.x, b.y
    region = np.sqrt(((x - (cx + 0.065)) / 0.075) ** 2 + ((y - cy) / 0.10) ** 2)
    r, phi = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    window = _taper(1 - region, 0.35) * _taper(r - 0.025, 0.02)
    lines = []
    for k, base in enumerate((-0.75, -0.35, 0.0, 0.35, 0.75)):
        dphi = phi - (base + p["line_jitter"][:, k, None, None])
        lines.append(_line(r * np.sin(dphi), w) * (np.cos(dphi) > 0) * window)
    regions.append((b, True, lines, region < 1))

    # under the eyes: arcs and a shadow
    b = g.box(ex - 1.15 * ew, ex + 1.15 * ew, ey + eh - 0.005, ey + eh + 0.095, right=True)
    x, y = b.x, b.y
    region = np.sqrt(((x - ex) / (1.15 * ew)) ** 2 + ((y - (ey + eh + 0.045)) / 0.05) ** 2)
    window = _taper(1 - region, 0.35)
    lines = []
    for k in range(3):
        ry = eh + 0.022 + 0.02 * k
        rx = ew * (0.85 + 0.08 * k)
        rho = np.sqrt(((x - ex) / rx) ** 2 + ((y - ey) / ry) ** 2)
        lines.append(_line((rho - 1) * ry, w) * (y > ey) * window)
    regions.append((b, True, lines + [window], region < 1))

    # forehead: wavy horizontal lines between hairline and brows
    top, bottom = p["hairline"] + 0.06, geo["brow_y"] - p["brow_t"] - 0.045
    b = g.box(-0.34, 0.34, top, bottom)
    x, y = b.x, b.y
    inside = np.minimum(np.minimum(0.34 - np.abs(x), y - top), bottom - y)
    window = _taper(inside, 0.04)
    lines = []
    for k in range(5):
        yk = top + (bottom - top) * (k + 0.5) / 5
        wave = 0.012 * np.sin(9 * x + p["line_phase"][:, k, None, None])
        lines.append(_line(y - yk - wave, w) * window)
    regions.append((b, False, lines, inside > 0))

    # laugh lines: from the nose wings down past the mouth corners
    a_x, a_y = p["nose_w"] + 0.04, geo["nose_y"] - 0.03
    b_x, b_y = p["mouth_w"] + 0.085, geo["mouth_y"] + 0.05
    length = np.hypot(b_x - a_x, b_y - a_y)
    nx0, ny0 = (b_y - a_y) / length, -(b_x - a_x) / length  # unit normal, pointing outwards
    ends = [a_x + 0.05 * nx0, a_y + 0.05 * ny0, b_x + 0.05 * nx0, b_y + 0.05 * ny0]
    b = g.box(np.minimum(ends[0], ends[2]) - 0.08, np.maximum(ends[0], ends[2]) + 0.08,
              np.minimum(ends[1], ends[3]) - 0.08, np.maximum(ends[1], ends[3]) + 0.08, right=True)
    x, y = b.x, b.y
    d = _segment_distance(x, y, *ends)
    window = _taper(0.08 - d, 0.02)
    lines = []
    for k in range(3):
        dk = _segment_distance(x, y, a_x + 0.05 * k * nx0, a_y + 0.05 * k * ny0,
                               b_x + 0.05 * k * nx0, b_y + 0.05 * k * ny0)
        lines.append(_line(dk, w) * window)
    regions.append((b, True, lines, d < 0.08))

    n = len(ex)
    layers, masks, start = [], np.zeros((n, len(regions), g.size, g.size), bool), 0
    for r, (b, mirrored, lines, mask) in enumerate(regions):
        stack = np.stack(np.broadcast_arrays(*lines), 1).astype(np.float32)  # (n, K, h, w)
        columns = slice(start, start + len(lines))
        start += len(lines)
        for (_, rows, cols), m in g.sides(b, mask) if mirrored else [(b.at, mask)]:
            masks[:, r, rows, cols] = m
        sides = g.sides(b, stack) if mirrored else [(b.at, stack)]
        layers += [(at, columns, np.ascontiguousarray(v)) for at, v in sides]
    return layers, masks


class Scratch:
    """Buffers for drawing a person's images, reused for every person (fresh large arrays cost
    more in page faults than the drawing).

    ``cv2.merge`` and ``cv2.split`` write to a 64-byte aligned array with non-temporal stores,
    straight to memory, so whatever reads it next waits for memory (the warp after the merge
    took twice as long): the buffers they fill and that are read right after do not start on a
    64-byte boundary, so their writes stay in cache."""

    def __init__(self, size: int, images: int):
        plane = lambda: np.empty((size, size), np.float32)  # noqa: E731
        self.shade, self.shaded = np.empty((images, size, size), np.float32), np.empty((3, size, size), np.float32)
        self.canonical, self.posed = _misaligned((size, size, 4)), np.empty((size, size, 4), np.float32)
        self.posed_planes = list(_misaligned((4, size, size)))
        self.light, self.along, self.lit, self.behind, self.along_behind, self.value = (plane() for _ in range(6))
        self.out = np.empty((3, size, size), np.uint8)


def _misaligned(shape: tuple[int, ...]) -> np.ndarray:
    """An empty float32 array ``shape`` whose data starts 4 bytes after a 64-byte boundary."""
    raw = np.empty(math.prod(shape) * 4 + 128, np.uint8)
    start = -raw.ctypes.data % 64 + 4
    return raw[start:start + math.prod(shape) * 4].view(np.float32).reshape(shape)


def render_images(people: People, frames: dict[str, np.ndarray], per_subject: int, noise_rng: np.random.Generator,
            scratch: Scratch, images: np.ndarray, masks: np.ndarray) -> None:
    """The images of n people (``per_subject`` each, in order), written into ``images``
    ``(m, S, S, 3)`` uint8 and ``masks`` ``(m, R, S, S)`` bool: mix the layers per image, pose,
    background, light, noise. ``frames``: `image_frames` of these images."""
    sc, fg, alpha = scratch, scratch.posed_planes[:3], scratch.posed_planes[3]
    masks_hwc = np.multiply(people.masks.transpose(0, 2, 3, 1), np.uint8(255), order="C")  # (n, S, S, R)
    planes = [(frames[name + "_y"], frames[name + "_x"], getattr(sc, name)) for name in ("light", "along", "lit")]
    out = list(sc.out)
    for i in range(len(images)):
        person, k = divmod(i, per_subject)
        if k == 0:
            mine = slice(i, min(i + per_subject, len(images)))
            shade = people.shade(person, frames["weights"][mine], sc.shade[:mine.stop - mine.start])
            masks_box = _box_of(people.masks[person])
        for of_y, of_x, plane in planes:
            np.matmul(of_y[i], of_x[i], out=plane)
        # the person's picture with this image's wrinkles, decoys and light, posed; the masks alike
        rgba, M = people.rgba[person], frames["pose"][i]
        sc.light *= shade[k]
        cv2.merge([*np.multiply(rgba[:3], sc.light, out=sc.shaded), rgba[3]], sc.canonical)
        cv2.split(_warp(sc.canonical, M, sc.posed), sc.posed_planes)
        _warp_masks(masks_hwc[person], masks_box, M, masks[i])
        # over the lit, rippled background, plus uniform noise of std noise_std
        np.subtract(1, alpha, out=sc.behind)
        sc.behind *= sc.lit  # the background's weight: uncovered, lit, rippled
        np.multiply(sc.along, sc.behind, out=sc.along_behind)
        noise = noise_rng.bit_generator.random_raw(math.ceil(sc.out.size / 8)).view(np.uint8)  # random bytes
        noise = noise[:sc.out.size].reshape(sc.out.shape)
        scale = frames["noise_scale"][i]
        for c in range(3):
            cv2.scaleAdd(sc.behind, frames["colour"][i, 0, c], fg[c], dst=sc.value)
            cv2.scaleAdd(sc.along_behind, frames["colour"][i, 1, c], sc.value, dst=sc.value)
            cv2.addWeighted(sc.value, 255, noise[c], scale, -127.5 * scale, dst=out[c], dtype=cv2.CV_8U)
        cv2.merge(out, images[i])


def _box_of(masks: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` pixel bounds (bottom, right excluded) of all ``masks``
    ``(R, S, S)``, or an empty box."""
    rows, cols = np.flatnonzero(masks.any((0, 2))), np.flatnonzero(masks.any((0, 1)))
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1) if len(rows) else (0, 0, 0, 0)


def _warp_masks(masks_hwc: np.ndarray, box: tuple[int, int, int, int], M: np.ndarray, out: np.ndarray) -> None:
    """Pose ``masks_hwc`` ``(S, S, R)`` uint8 0/255, all inside ``box``, by ``M`` (bilinear,
    then > 127) into ``out`` ``(R, S, S)`` bool: only the rectangle around the posed box is
    warped (a pixel outside it reads only zeros). The result is a whole warp's but for about
    one pixel in a million, a value on 127.5 that the warp's fixed-point rounding of the
    rectangle's origin tips the other way."""
    S, (top, bottom, left, right) = out.shape[-1], box
    (a, b, tx), (c, d, ty) = M.tolist()
    corners = [(u, v) for u in (left - 1, right) for v in (top - 1, bottom)]  # where a read can reach a mask
    xs, ys = [a * u + b * v + tx for u, v in corners], [c * u + d * v + ty for u, v in corners]
    x0, y0 = max(math.floor(min(xs)), 0), max(math.floor(min(ys)), 0)
    x1, y1 = min(math.ceil(max(xs)) + 1, S), min(math.ceil(max(ys)) + 1, S)
    out_u8 = out.view(np.uint8)
    out_u8.fill(0)
    if bottom == top or x1 <= x0 or y1 <= y0:
        return
    posed = cv2.warpAffine(masks_hwc, np.array([[a, b, tx - x0], [c, d, ty - y0]]), (x1 - x0, y1 - y0),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    posed = cv2.threshold(posed, 127, 1, cv2.THRESH_BINARY, dst=posed)[1].reshape(y1 - y0, x1 - x0, -1)
    for region, plane in zip(out_u8, cv2.split(posed)):
        region[y0:y1, x0:x1] = plane


def image_frames(g: Grid, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What `render_images` needs of each image, arrays ``(m, ...)``: the layer ``weights``
    (`line_weights`, then the cheek and clothes decoys), the ``pose`` matrix, the background
    ``colour`` (at the gradient's start and its change), the ``noise_scale`` and three planes,
    each as factors ``_y`` ``(m, S, k)`` and ``_x`` ``(m, k, S)`` whose product is the plane:
    ``along`` the background's colour gradient (0.5 at the centre) and ``lit`` its ripple (a
    decoy) times the lighting, both in the image frame, and ``light`` the lighting in the
    person's canonical frame (the lighting gradient of the image, carried back by the pose).

    Each plane is a sum of products of a function of y and a function of x (for the ripple:
    sin(A + B) = sin A cos B + cos A sin B)."""
    m, t = len(rows["age"]), g.t[None]  # (1, S): x of a column, y of a row
    col = lambda name: rows[name].astype(np.float32)[:, None]  # noqa: E731  (m, 1)
    cos, sin = np.cos(col("bg_angle")), np.sin(col("bg_angle"))
    along = [1, 0.5 * sin * t], [0.5 + 0.5 * cos * t, 1]
    a, b = col("bg_freq") * cos * t, col("bg_freq") * sin * t + col("bg_phase")
    k = 0.25 * col("decoy_background")
    ripple = [1, k * np.cos(b), k * np.sin(b)], [1, np.sin(a), np.cos(a)]
    lx, ly = col("light") * np.cos(col("light_angle")), col("light") * np.sin(col("light_angle"))
    light = [1, ly * t], [1 + lx * t, 1]
    lit = [u * v for u in ripple[0] for v in light[0]], [u * v for u in ripple[1] for v in light[1]]
    pose = _pose_matrices(rows, g.size)
    # the pose puts the canonical point (x', y') at x = r[0, 0] x' + r[0, 1] y' + s[0], y likewise
    r = pose[:, :, :2, None].astype(np.float32)  # (m, 2, 2, 1)
    s = ((pose[:, :, :2].sum(2) * (g.size - 1) / 2 + pose[:, :, 2] + 0.5) * (2 / g.size) - 1).astype(np.float32)
    light_canonical = ([1, (lx * r[:, 0, 1] + ly * r[:, 1, 1]) * t],
                       [1 + lx * s[:, :1] + ly * s[:, 1:] + (lx * r[:, 0, 0] + ly * r[:, 1, 0]) * t, 1])
    stack = lambda fs, axis: np.stack([np.broadcast_to(np.float32(f), (m, g.size)) for f in fs], axis)  # noqa: E731
    weights = np.concatenate([line_weights(region_strength(rows["age"]), rows["wrinkle_gain"]),
                              0.35 * rows["decoy_cheeks"][:, None], -0.25 * rows["decoy_clothes"][:, None]], 1)
    colour = np.stack([[rows[f"bg0_{c}"], rows[f"bg1_{c}"] - rows[f"bg0_{c}"]] for c in range(3)], -1)  # (2, m, 3)
    frames = {"weights": weights.astype(np.float32), "pose": pose,
              "colour": colour.transpose(1, 0, 2),
              "noise_scale": 255 * rows["noise_std"] * (2 * math.sqrt(3) / 256)}  # random byte → std noise_std
    for name, (of_y, of_x) in (("along", along), ("lit", lit), ("light", light_canonical)):
        frames[name + "_y"], frames[name + "_x"] = stack(of_y, -1), stack(of_x, -2)
    return frames


@contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """Let OpenCV use ``n`` threads for a while."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _warp(image: np.ndarray, M: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Bilinear warp of ``(S, S, C)`` by the 2×3 matrix ``M``, zero outside."""
    size = image.shape[:2][::-1]
    return cv2.warpAffine(image, M, size, dst=out, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _pose_matrices(rows: dict[str, np.ndarray], size: int) -> np.ndarray:
    """2×3 similarities ``(m, 2, 3)`` taking the canonical frame to each image: rotate
    (counter-clockwise, degrees) and scale about the centre, then shift (as
    ``cv2.getRotationMatrix2D`` plus the shift)."""
    angle = np.radians(rows["rotation_deg"])
    a, b = rows["scale"] * np.cos(angle), rows["scale"] * np.sin(angle)
    c = (size - 1) / 2
    return np.stack([np.stack([a, b, (1 - a) * c - b * c + rows["shift_x"] * size / 2], -1),
                     np.stack([-b, a, b * c + (1 - a) * c + rows["shift_y"] * size / 2], -1)], 1)
