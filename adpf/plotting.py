"""The book's figures in one style: a seaborn theme, one colour per head, and a few face plots.

Images are accepted as torch tensors ``(3, H, W)`` in [0, 1] (the library's contract) or as
numpy arrays ``(H, W, 3)`` / ``(H, W)``; maps as ``(h, w)`` tensors or arrays of any size (they
are stretched over the face they are drawn on).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

PALETTE = "colorblind"
# the colorblind palette reordered so the first five (the paper's five heads) are far apart
_HEAD_ORDER = (0, 1, 2, 4, 9, 3, 5, 8, 7, 6)
MAP_CMAP = "magma"


def set_theme() -> None:
    """The book's seaborn theme: white background, readable fonts, crisp figures."""
    sns.set_theme(context="notebook", style="white", palette=PALETTE,
                  rc={"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": 10,
                      "axes.labelsize": 10, "figure.titlesize": 12})


def head_color(k: int) -> tuple[float, float, float]:
    """The colour of head ``k`` (0-based) in every figure of the book."""
    palette = sns.color_palette(PALETTE)
    return palette[_HEAD_ORDER[k % len(_HEAD_ORDER)]]


def as_image(image) -> np.ndarray:
    """``(H, W, 3)`` or ``(H, W)`` float array in [0, 1] from a tensor ``(3, H, W)`` or an array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image / 255.0
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image (3, H, W) or (H, W[, 3]), got shape {image.shape}")
    return np.clip(image, 0.0, 1.0)


def as_map(heat) -> np.ndarray:
    """A 2-D float array from a ``(h, w)`` tensor or array."""
    if isinstance(heat, torch.Tensor):
        heat = heat.detach().cpu().double().numpy()
    heat = np.asarray(heat, dtype=float)
    if heat.ndim != 2:
        raise ValueError(f"expected a map (h, w), got shape {heat.shape}")
    return heat


def grid(n: int, ncols: int, size: float = 1.8) -> tuple[Figure, np.ndarray]:
    """A figure with ``n`` square panels in rows of ``ncols``; the unused panels are hidden."""
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes.flat[:n]


def show_face(ax: Axes, image, title: str | None = None) -> Axes:
    """Draw one face (no ticks) with an optional title."""
    image = as_image(image)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def show_faces(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 8,
               size: float = 1.8) -> Figure:
    """A grid of faces, ``images`` a batch ``(B, 3, H, W)`` or a sequence of images."""
    titles = list(titles) if titles is not None else [None] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    fig, axes = grid(len(images), ncols, size)
    for ax, image, title in zip(axes, images, titles):
        show_face(ax, image, title)
    fig.tight_layout()
    return fig


def _stretch(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour stretch of a map onto an image of ``shape`` (keeps the cells visible)."""
    rows = np.arange(shape[0]) * heat.shape[0] // shape[0]
    cols = np.arange(shape[1]) * heat.shape[1] // shape[1]
    return heat[np.ix_(rows, cols)]


def overlay_map(ax: Axes, image, heat, alpha: float = 0.55, cmap: str = MAP_CMAP,
                title: str | None = None, normalize: bool = True,
                vmin: float | None = None, vmax: float | None = None):
    """A map drawn over a face.

    With ``normalize`` the map is min-max scaled to [0, 1] first; otherwise its colours span
    ``vmin..vmax`` (the map's own range when they are None). Returns the map's ``AxesImage``
    (for a colour bar).
    """
    image = as_image(image)
    heat = as_map(heat)
    if normalize:
        span = heat.max() - heat.min()
        heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        vmin, vmax = 0.0, 1.0
    show_face(ax, image, title)
    return ax.imshow(_stretch(heat, image.shape[:2]), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)


def overlay_masks(ax: Axes, image, masks, labels: Sequence[str] | None = None,
                  alpha: float = 0.5, title: str | None = None) -> Axes:
    """Boolean masks ``(R, H, W)`` drawn over a face, one colour each, with an optional legend."""
    image = as_image(image)
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks (R, H, W), got shape {masks.shape}")
    show_face(ax, image, title)
    for r, mask in enumerate(masks.astype(bool)):
        mask = _stretch(mask, image.shape[:2])
        layer = np.zeros((*mask.shape, 4))
        layer[mask] = (*head_color(r), alpha)
        ax.imshow(layer)
    if labels is not None:
        handles = [Rectangle((0, 0), 1, 1, color=head_color(r)) for r in range(len(masks))]
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False,
                  fontsize=8)
    return ax


def draw_boxes(ax: Axes, boxes, labels: Sequence[str] | None = None,
               colors: Sequence | None = None, linewidth: float = 2.0) -> Axes:
    """Boxes ``(K, 4)`` as ``(x0, y0, x1, y1)`` pixel corners, head colours unless ``colors``."""
    boxes = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes)
    for k, (x0, y0, x1, y1) in enumerate(boxes.reshape(-1, 4)):
        color = colors[k] if colors is not None else head_color(k)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                               linewidth=linewidth))
        if labels is not None:
            ax.text(x0 + 1, y0 + 1, labels[k], color="white", fontsize=7, va="top",
                    bbox=dict(facecolor=color, edgecolor="none", pad=1))
    return ax


def show_source(obj):
    """The source of a library function or class as a highlighted code block.

    The book shows the library's own code this way, so the page and the library never drift.
    """
    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(obj)}```")
