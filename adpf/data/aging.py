"""The age model of the synthetic faces: which regions age, how strongly, and from what age.

Age shows **only** in four local regions (`REGION_NAMES`); `adpf.data.render` draws each as a
few wrinkle lines with a ground-truth mask:

``crows_feet``  radial lines fanning out of both outer eye corners,
``under_eye``   arcs and a shadow (bags) below both eyes,
``forehead``    wavy horizontal lines between the brows and the hairline,
``nasolabial``  laugh lines from the nose wings down past the mouth corners.

A region's strength (`region_strength`) grows linearly with age between its onset age and the
age of full strength (`REGION_AGES`); its lines appear one after another and darken as it
grows (`line_weights`), each person a little more or less than another (their wrinkle gain).
Age → strength → line weights is all that age changes in a picture.
"""
from __future__ import annotations

import numpy as np

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
REGION_CONTRAST = {"crows_feet": 0.40, "under_eye": 0.35, "forehead": 0.35, "nasolabial": 0.40}
#: Wrinkle lines per region.
REGION_LINES = {"crows_feet": 5, "under_eye": 3, "forehead": 5, "nasolabial": 3}
#: The age layers `line_weights` weighs: every line and the under-eye shadow.
N_LINES = sum(REGION_LINES.values()) + 1


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
        k = np.arange(REGION_LINES[name])
        w = np.clip(s * REGION_LINES[name] - k, 0.0, 1.0) * (0.5 + 0.5 * s) * REGION_CONTRAST[name]
        out.append(w)
        if name == "under_eye":
            out.append(0.12 * s)
    return np.concatenate(out, axis=-1) * np.asarray(gain, dtype=np.float64)[..., None]
