"""The embedded default dataset: drawn faces whose age shows only in known local regions.

A fresh machine has no face data, so by default the project draws its own. Every face is a
person (face shape, skin tone, hair, eye spacing …) seen in a pose (rotation, scale, shift),
under a lighting gradient, in front of a background. Age is visible **only** in four local
regions, each with a ground-truth mask:

``crows_feet``  radial lines fanning out of both outer eye corners,
``under_eye``   arcs and a shadow (bags) below both eyes,
``forehead``    wavy horizontal lines between the brows and the hairline,
``nasolabial``  laugh lines from the nose wings down past the mouth corners.

The lines of a region appear one after another and darken as the region's strength
(`region_strength`) grows with age; each person wrinkles a little more or less than
another (``wrinkle_gain``). Decoy textures that do **not** depend on age sit elsewhere:
freckles on the cheeks, stripes on the clothes, waves on the background. Because the pose
and the person move the regions, a patch cropped at a fixed place misses them: the model
has to find them.

Each person is first rendered once in a canonical frame (the base picture, one layer per
wrinkle line, the decoy layers and the region masks); each of their images then mixes those
layers with its own age and decoy strengths (one matrix product), and the same
``cv2.warpAffine`` puts picture and masks in its pose, so a region's mask moves exactly
with its texture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import cv2
import numpy as np
import pandas as pd

#: Bumped whenever the drawing changes, so cached datasets drawn by an older version are redrawn.
GENERATOR_VERSION = 1

REGION_NAMES: tuple[str, ...] = ("crows_feet", "under_eye", "forehead", "nasolabial")

#: Age (years) at which a region's first line starts to show, and age at which all its lines
#: are at full strength. The regions take turns: the forehead tells young ages apart,
#: the laugh lines old ones.
REGION_AGES: dict[str, tuple[float, float]] = {
    "forehead": (10.0, 70.0),
    "under_eye": (15.0, 65.0),
    "crows_feet": (25.0, 75.0),
    "nasolabial": (35.0, 80.0),
}
#: Darkening of a full-strength line (fraction of the skin's brightness).
_REGION_CONTRAST = {"crows_feet": 0.40, "under_eye": 0.35, "forehead": 0.35, "nasolabial": 0.40}
_LINES = {"crows_feet": 5, "under_eye": 3, "forehead": 5, "nasolabial": 3}

_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.36, 0.23, 0.15])
_HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15],
                  [0.85, 0.70, 0.42], [0.60, 0.26, 0.10]])
_IRIS = np.array([[0.35, 0.20, 0.08], [0.18, 0.10, 0.05], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30]])


def region_strength(age) -> np.ndarray:
    """The age signal of each region: 0 before its onset age, rising linearly to 1.

    age: scalar or array of shape ``(...)`` in years.
    Returns ``(..., R)`` in [0, 1], columns in `REGION_NAMES` order.
    """
    age = np.asarray(age, dtype=np.float64)[..., None]
    onset = np.array([REGION_AGES[r][0] for r in REGION_NAMES])
    full = np.array([REGION_AGES[r][1] for r in REGION_NAMES])
    return np.clip((age - onset) / (full - onset), 0.0, 1.0)


def line_weights(strength: np.ndarray, gain: np.ndarray | float = 1.0) -> np.ndarray:
    """Darkening of every wrinkle line, from the regions' strengths.

    Region r has K_r lines; line k shows once the strength passes k / K_r and is complete
    one step later, so density and depth both grow with age. A full-strength line darkens
    the skin by the region's contrast times the person's ``gain``.

    strength: ``(..., R)`` from `region_strength`. gain: scalar or ``(...)``.
    Returns ``(..., L)`` with L = ΣK_r, lines grouped by region in `REGION_NAMES` order
    (the under-eye group ends with its shadow, whose weight is the strength itself).
    """
    strength = np.asarray(strength, dtype=np.float64)
    out = []
    for r, name in enumerate(REGION_NAMES):
        s = strength[..., r: r + 1]
        k = np.arange(_LINES[name])
        w = np.clip(s * _LINES[name] - k, 0.0, 1.0) * (0.5 + 0.5 * s) * _REGION_CONTRAST[name]
        out.append(w)
        if name == "under_eye":
            out.append(0.12 * s)
    return np.concatenate(out, axis=-1) * np.asarray(gain, dtype=np.float64)[..., None]


@dataclass(frozen=True)
class SyntheticFaceSpec:
    """What to draw. Ages are whole years drawn uniformly from ``age_min..age_max``.

    images_per_subject: consecutive images share a person (the last may have fewer).
    max_rotation_deg, scale_range, max_shift: the pose (shift as a fraction of the
        half-width of the image).
    max_light: the lighting gradient multiplies the picture by up to 1 ± max_light.
    noise_std: range of the per-image standard deviation of the (uniform) pixel noise,
        in units of the full intensity range.
    """

    age_min: int = 10
    age_max: int = 80
    images_per_subject: int = 10
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shift: float = 0.12
    max_light: float = 0.3
    noise_std: tuple[float, float] = (0.01, 0.03)

    def __post_init__(self) -> None:
        if not 0 <= self.age_min < self.age_max:
            raise ValueError(f"need 0 <= age_min < age_max, got {self.age_min}, {self.age_max}")
        if self.images_per_subject < 1:
            raise ValueError(f"images_per_subject must be >= 1, got {self.images_per_subject}")


@dataclass
class SyntheticFaces:
    """A batch of drawn faces.

    images: ``(N, H, W, 3)`` uint8. ages: ``(N,)`` float32 years. subjects: ``(N,)`` int64.
    masks: ``(N, R, H, W)`` bool, one channel per name in ``region_names``.
    params: one row per image: the pose, lighting, decoy strengths and the person's
        wrinkle gain (what the book needs to explain a picture).
    """

    images: np.ndarray
    ages: np.ndarray
    subjects: np.ndarray
    masks: np.ndarray
    region_names: tuple[str, ...] = REGION_NAMES
    params: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return len(self.images)


def make_synthetic_faces(n: int, image_size: int = 128, seed: int = 0,
                         spec: SyntheticFaceSpec | None = None,
                         ages: np.ndarray | None = None) -> SyntheticFaces:
    """Draw ``n`` faces at ``image_size``×``image_size``, deterministically from ``seed``.

    ages: optional ``(n,)`` ages that replace the drawn ones while everything else (people,
    poses, lighting, decoys, noise) stays the same: the same faces, older or younger.
    """
    chunks = list(iter_synthetic_faces(n, image_size, seed, spec, ages))
    return SyntheticFaces(
        images=np.concatenate([c.images for c in chunks]),
        ages=np.concatenate([c.ages for c in chunks]),
        subjects=np.concatenate([c.subjects for c in chunks]),
        masks=np.concatenate([c.masks for c in chunks]),
        params=pd.concat([c.params for c in chunks], ignore_index=True),
    )


def iter_synthetic_faces(n: int, image_size: int = 128, seed: int = 0,
                         spec: SyntheticFaceSpec | None = None,
                         ages: np.ndarray | None = None) -> Iterator[SyntheticFaces]:
    """`make_synthetic_faces`, one person at a time (bounded memory for large ``n``)."""
    spec = spec or SyntheticFaceSpec()
    if n < 1 or image_size < 16:
        raise ValueError(f"need n >= 1 and image_size >= 16, got n={n}, image_size={image_size}")
    rng = np.random.default_rng(seed)
    n_subjects = math.ceil(n / spec.images_per_subject)
    people = _sample_people(n_subjects, rng)
    params = _sample_images(n, spec, rng)
    if ages is not None:
        ages = np.asarray(ages, dtype=np.float64)
        if ages.shape != (n,):
            raise ValueError(f"ages must have shape ({n},), got {ages.shape}")
        params["age"] = ages
    params["subject"] = np.arange(n) // spec.images_per_subject
    params["wrinkle_gain"] = people["wrinkle_gain"][params["subject"]]
    noise_rng = np.random.default_rng([seed, 1])
    grid = _grid(image_size)
    for s in range(n_subjects):
        rows = params.iloc[s * spec.images_per_subject: (s + 1) * spec.images_per_subject]
        person = {k: v[s].astype(np.float32) if v.ndim > 1 else float(v[s]) for k, v in people.items()}
        yield _render_person(person, rows.reset_index(drop=True), grid, noise_rng)


# --------------------------------------------------------------------------- sampling

def _sample_people(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    tone = u(0, 1)[:, None]
    skin = _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone + rng.uniform(-0.03, 0.03, (n, 3))
    hair = _HAIR[rng.integers(0, len(_HAIR), n)] * rng.uniform(0.85, 1.15, (n, 1))
    return {
        "face_w": u(0.50, 0.60), "face_h": u(0.70, 0.80), "jaw": u(0.0, 0.35),
        "skin": np.clip(skin, 0, 1),
        "eye_dx": u(0.22, 0.27), "eye_y": u(-0.12, -0.05),
        "eye_w": u(0.085, 0.105), "eye_h": u(0.035, 0.048),
        "iris": _IRIS[rng.integers(0, len(_IRIS), n)],
        "brow_up": u(0.09, 0.12), "brow_t": u(0.016, 0.028),
        "nose_len": u(0.19, 0.25), "nose_w": u(0.06, 0.085),
        "mouth_gap": u(0.12, 0.16), "mouth_w": u(0.07, 0.095),
        "hair": np.clip(hair, 0, 1), "hairline": u(-0.62, -0.52),
        "hair_vol": u(1.04, 1.22), "hair_len": u(-0.15, 0.55),
        "clothes": rng.uniform(0.1, 0.9, (n, 3)), "neck_w": u(0.17, 0.24),
        "stripe_f": u(25, 50), "stripe_a": u(0, np.pi), "stripe_p": u(0, 2 * np.pi),
        "spot_f": u(35, 55), "spot_a": u(0, np.pi), "spot_p": rng.uniform(0, 2 * np.pi, (n, 2)),
        "line_phase": rng.uniform(0, 2 * np.pi, (n, 5)), "line_jitter": rng.uniform(-0.1, 0.1, (n, 5)),
        "wrinkle_gain": u(0.8, 1.2),
    }


def _sample_images(n: int, spec: SyntheticFaceSpec, rng: np.random.Generator) -> pd.DataFrame:
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    gray = rng.uniform(0.15, 0.85, (n, 1))
    bg0 = 0.6 * gray + 0.4 * rng.uniform(0, 1, (n, 3))
    bg1 = 0.6 * gray + 0.4 * rng.uniform(0, 1, (n, 3))
    p = {
        "age": rng.integers(spec.age_min, spec.age_max + 1, n).astype(np.float64),
        "rotation_deg": u(-spec.max_rotation_deg, spec.max_rotation_deg),
        "scale": u(*spec.scale_range),
        "shift_x": u(-spec.max_shift, spec.max_shift), "shift_y": u(-spec.max_shift, spec.max_shift),
        "light": u(0, spec.max_light), "light_angle": u(0, 2 * np.pi),
        "noise_std": u(*spec.noise_std),
        "decoy_cheeks": u(0, 1), "decoy_clothes": u(0, 1), "decoy_background": u(0, 1),
        "bg_angle": u(0, 2 * np.pi), "bg_freq": u(4, 14), "bg_phase": u(0, 2 * np.pi),
    }
    for c in range(3):
        p[f"bg0_{c}"], p[f"bg1_{c}"] = bg0[:, c], bg1[:, c]
    return pd.DataFrame(p)


# --------------------------------------------------------------------------- drawing

@dataclass
class _Grid:
    size: int
    x: np.ndarray  # (S, S) in [-1, 1], +x to the right
    y: np.ndarray  # (S, S) in [-1, 1], +y downwards

    @property
    def px(self) -> float:
        return 2.0 / self.size


def _grid(size: int) -> _Grid:
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(t, t, indexing="ij")
    return _Grid(size, x, y)


def _ellipse(g: _Grid, x, y, cx, cy, rx, ry) -> np.ndarray:
    """Anti-aliased coverage of an ellipse, ``(S, S)`` in [0, 1]."""
    rho = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip((1 - rho) * min(rx, ry) / g.px + 0.5, 0, 1)


def _line(d, width) -> np.ndarray:
    """Profile of a line at signed distance ``d``."""
    return np.exp(-0.5 * (d / width) ** 2)


def _taper(inside_dist, margin) -> np.ndarray:
    """1 deep inside a region, falling to 0 at its border (``inside_dist`` > 0 inside)."""
    return np.clip(inside_dist / margin, 0, 1)


def _paint(rgb, alpha, color, a) -> None:
    """Paint ``color`` with coverage ``a`` ``(S, S)`` over ``rgb`` ``(3, S, S)``."""
    for channel, value in zip(rgb, color):
        channel += a * (value - channel)
    alpha += a * (1 - alpha)


def _segment_distance(x, y, ax, ay, bx, by):
    """Distance to the segment A→B and the position t along it."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - ax - t * dx, y - ay - t * dy), t


def _wrinkle_layers(p: dict, g: _Grid, geo: dict) -> tuple[np.ndarray, np.ndarray]:
    """One layer per wrinkle line ``(L, S, S)`` and the region masks ``(R, S, S)`` bool,
    in the person's canonical frame."""
    x, y, ax = g.x, g.y, np.abs(g.x)
    w = max(0.008, 0.5 * g.px)
    ex, ey, ew, eh = p["eye_dx"], p["eye_y"], p["eye_w"], p["eye_h"]
    layers, masks = [], []

    # crow's feet: lines fanning out of the outer eye corners
    cx, cy = ex + ew + 0.015, ey
    region = np.sqrt(((ax - (cx + 0.065)) / 0.075) ** 2 + ((y - cy) / 0.10) ** 2)
    r, phi = np.hypot(ax - cx, y - cy), np.arctan2(y - cy, ax - cx)
    window = _taper(1 - region, 0.35) * _taper(r - 0.025, 0.02)
    for k, base in enumerate((-0.75, -0.35, 0.0, 0.35, 0.75)):
        dphi = phi - (base + p["line_jitter"][k])
        layers.append(_line(r * np.sin(dphi), w) * (np.cos(dphi) > 0) * window)
    masks.append(region < 1)

    # under the eyes: arcs and a shadow
    region = np.sqrt(((ax - ex) / (1.15 * ew)) ** 2 + ((y - (ey + eh + 0.045)) / 0.05) ** 2)
    window = _taper(1 - region, 0.35)
    for k in range(3):
        ry = eh + 0.022 + 0.02 * k
        rx = ew * (0.85 + 0.08 * k)
        rho = np.sqrt(((ax - ex) / rx) ** 2 + ((y - ey) / ry) ** 2)
        layers.append(_line((rho - 1) * ry, w) * (y > ey) * window)
    layers.append(window)
    masks.append(region < 1)

    # forehead: wavy horizontal lines between hairline and brows
    top, bottom = p["hairline"] + 0.06, geo["brow_y"] - p["brow_t"] - 0.045
    inside = np.minimum(np.minimum(0.34 - ax, y - top), bottom - y)
    window = _taper(inside, 0.04)
    for k in range(5):
        yk = top + (bottom - top) * (k + 0.5) / 5
        wave = 0.012 * np.sin(9 * x + p["line_phase"][k])
        layers.append(_line(y - yk - wave, w) * window)
    masks.append(inside > 0)

    # laugh lines: from the nose wings down past the mouth corners
    a_x, a_y = p["nose_w"] + 0.04, geo["nose_y"] - 0.03
    b_x, b_y = p["mouth_w"] + 0.085, geo["mouth_y"] + 0.05
    length = math.hypot(b_x - a_x, b_y - a_y)
    nx0, ny0 = (b_y - a_y) / length, -(b_x - a_x) / length  # unit normal, pointing outwards
    d, _ = _segment_distance(ax, y, a_x + 0.05 * nx0, a_y + 0.05 * ny0, b_x + 0.05 * nx0, b_y + 0.05 * ny0)
    window = _taper(0.08 - d, 0.02)
    for k in range(3):
        dk, _ = _segment_distance(ax, y, a_x + 0.05 * k * nx0, a_y + 0.05 * k * ny0,
                                  b_x + 0.05 * k * nx0, b_y + 0.05 * k * ny0)
        layers.append(_line(dk, w) * window)
    masks.append(d < 0.08)
    return np.stack(layers).astype(np.float32), np.stack(masks)


def _person_canvas(p: dict, g: _Grid) -> dict:
    """The canonical picture of a person and its layers."""
    x, y, ax = g.x, g.y, np.abs(g.x)
    S = g.size
    rgb = np.zeros((3, S, S), np.float32)
    alpha = np.zeros((S, S), np.float32)
    cy, fw, fh = 0.05, p["face_w"], p["face_h"]
    geo = {"brow_y": p["eye_y"] - p["brow_up"], "nose_y": p["eye_y"] + p["nose_len"]}
    geo["mouth_y"] = geo["nose_y"] + p["mouth_gap"]

    clothes = _ellipse(g, x, y, 0, 1.28, 0.95, 0.52)
    stripes = np.sin(p["stripe_f"] * (x * np.cos(p["stripe_a"]) + y * np.sin(p["stripe_a"])) + p["stripe_p"])
    _paint(rgb, alpha, p["clothes"], clothes)
    neck = np.clip((p["neck_w"] - ax) / g.px + 0.5, 0, 1) * (y > cy)
    _paint(rgb, alpha, p["skin"] * 0.85, neck)
    hair_back = _ellipse(g, x, y, 0, cy - 0.06, fw * p["hair_vol"], fh * p["hair_vol"] * 0.95)
    hair_back *= np.clip((p["hair_len"] - y) / g.px + 0.5, 0, 1)
    _paint(rgb, alpha, p["hair"], hair_back)

    half_w = fw * (1 - p["jaw"] * np.clip((y - cy) / fh, 0, 1) ** 2)
    rho = np.sqrt((x / half_w) ** 2 + ((y - cy) / fh) ** 2)
    face = np.clip((1 - rho) * fw / g.px + 0.5, 0, 1)
    _paint(rgb, alpha, p["skin"], face)
    rgb *= 1 - 0.18 * np.clip(rho, 0, 1) ** 4 * face  # rounded shading

    ex, ey, ew, eh = p["eye_dx"], p["eye_y"], p["eye_w"], p["eye_h"]
    _paint(rgb, alpha, p["skin"] * 0.35, _ellipse(g, ax, y, ex, ey, ew * 1.08, eh * 1.2))
    _paint(rgb, alpha, (0.94, 0.93, 0.90), _ellipse(g, ax, y, ex, ey, ew, eh))
    _paint(rgb, alpha, p["iris"], _ellipse(g, ax, y, ex, ey, eh * 0.95, eh * 0.95))
    _paint(rgb, alpha, (0.03, 0.03, 0.03), _ellipse(g, ax, y, ex, ey, eh * 0.42, eh * 0.42))
    arch = geo["brow_y"] + 0.035 * ((ax - ex) / ew) ** 2
    brow = _ellipse(g, ax, y - arch + geo["brow_y"], ex, geo["brow_y"], ew * 1.25, p["brow_t"])
    _paint(rgb, alpha, p["hair"] * 0.8, brow)

    ny, nw = geo["nose_y"], p["nose_w"]
    side = _line(x - 0.6 * nw, 0.02) * np.clip((y - ey) / 0.05, 0, 1) * (y < ny)
    rgb *= 1 - 0.12 * side
    _paint(rgb, alpha, p["skin"] * 0.4, _ellipse(g, ax, y, 0.5 * nw, ny, 0.028, 0.014))
    my, mw = geo["mouth_y"], p["mouth_w"]
    lips = np.clip(p["skin"] * 0.75 + np.array([0.2, 0.0, 0.02]), 0, 1)
    _paint(rgb, alpha, lips, _ellipse(g, x, y, 0, my, mw, 0.032))
    _paint(rgb, alpha, lips * 0.45, _line(y - my, 0.006) * _ellipse(g, x, y, 0, my, mw, 0.032))

    hairline = p["hairline"] + 0.05 * (x / fw) ** 2
    fringe = np.clip((hairline - y) / g.px + 0.5, 0, 1) * _ellipse(g, x, y, 0, cy - 0.02, fw * 1.06, fh * 1.02)
    strands = 1 + 0.12 * np.sin(70 * x + 8 * y)
    _paint(rgb, alpha, p["hair"], fringe)
    rgb *= np.where(np.maximum(fringe, hair_back * (1 - face)) > 0.5, strands, 1)

    layers, masks = _wrinkle_layers(p, g, geo)
    masks &= (face > 0.5) & (fringe < 0.5)
    cheeks = _ellipse(g, ax, y, ex + 0.06, ny + 0.01, 0.09, 0.07) * ~masks.any(0)
    u = x * np.cos(p["spot_a"]) + y * np.sin(p["spot_a"])
    v = -x * np.sin(p["spot_a"]) + y * np.cos(p["spot_a"])
    spots = np.clip((np.sin(p["spot_f"] * u + p["spot_p"][0]) * np.sin(p["spot_f"] * v + p["spot_p"][1]) - 0.55) / 0.45, 0, 1)
    return {"rgb": rgb, "alpha": alpha, "layers": layers, "masks": masks,
            "cheeks": (cheeks * spots).astype(np.float32), "stripes": (clothes * stripes).astype(np.float32)}


def _render_person(p: dict, rows: pd.DataFrame, g: _Grid, noise_rng: np.random.Generator) -> SyntheticFaces:
    """All images of one person: mix the layers per image, pose, background, light, noise."""
    S, m = g.size, len(rows)
    c = _person_canvas(p, g)
    R = len(c["masks"])
    col = lambda name: rows[name].to_numpy(np.float32)[:, None, None, None]  # noqa: E731  (m, 1, 1, 1)
    weights = line_weights(region_strength(rows["age"].to_numpy()), rows["wrinkle_gain"].to_numpy())
    shade = 1 - (weights.astype(np.float32) @ c["layers"].reshape(len(c["layers"]), -1)).reshape(m, 1, S, S)
    shade -= 0.35 * col("decoy_cheeks") * c["cheeks"]
    shade += 0.25 * col("decoy_clothes") * c["stripes"]
    masks_hwc = np.ascontiguousarray(c["masks"].transpose(1, 2, 0), dtype=np.uint8) * np.uint8(255)
    posed = np.empty((m, 4, S, S), np.float32)
    masks = np.empty((m, R, S, S), bool)
    for i, row in enumerate(rows.itertuples()):
        M = _pose_matrix(row, S)
        rgba = cv2.merge([*(c["rgb"] * shade[i]), c["alpha"]])
        posed[i] = _warp(rgba, M).transpose(2, 0, 1)
        masks[i] = _warp(masks_hwc, M).reshape(S, S, R).transpose(2, 0, 1) > 127
    fg, alpha = posed[:, :3], posed[:, 3:]

    bg0 = rows[[f"bg0_{i}" for i in range(3)]].to_numpy(np.float32)[:, :, None, None]
    bg1 = rows[[f"bg1_{i}" for i in range(3)]].to_numpy(np.float32)[:, :, None, None]
    along = g.x * np.cos(col("bg_angle")) + g.y * np.sin(col("bg_angle"))  # (m, 1, S, S)
    bg = bg0 + (bg1 - bg0) * (0.5 + 0.5 * along)
    bg *= 1 + 0.25 * col("decoy_background") * np.sin(col("bg_freq") * along + col("bg_phase"))
    img = fg + bg * (1 - alpha)
    img *= 1 + col("light") * (g.x * np.cos(col("light_angle")) + g.y * np.sin(col("light_angle")))
    img += _uniform_noise(noise_rng, (m, 3, S, S)) * col("noise_std")
    img = np.clip(img, 0, 1) * 255 + 0.5
    return SyntheticFaces(
        images=img.astype(np.uint8).transpose(0, 2, 3, 1).copy(),
        ages=rows["age"].to_numpy(np.float32),
        subjects=rows["subject"].to_numpy(np.int64),
        masks=masks,
        params=rows,
    )


def _warp(image: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Bilinear warp of ``(S, S, C)`` by the 2×3 matrix ``M``, zero outside."""
    size = image.shape[:2][::-1]
    return cv2.warpAffine(image, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _uniform_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Zero-mean, unit-variance uniform noise (from random bytes: several times faster than
    Gaussian noise, which dominated the drawing time)."""
    u = np.frombuffer(rng.bytes(math.prod(shape)), np.uint8).reshape(shape).astype(np.float32)
    return (u - 127.5) * np.float32(2 * math.sqrt(3) / 256)


def _pose_matrix(row, size: int) -> np.ndarray:
    """2×3 similarity taking the canonical frame to the image: rotate and scale about the
    centre, then shift."""
    centre = ((size - 1) / 2, (size - 1) / 2)
    M = cv2.getRotationMatrix2D(centre, row.rotation_deg, row.scale)
    M[:, 2] += np.array([row.shift_x, row.shift_y]) * size / 2
    return M
