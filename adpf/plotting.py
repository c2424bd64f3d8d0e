"""The book's figures in one style: a seaborn theme, one colour per head, and a few face plots.

Images are accepted as torch tensors ``(3, H, W)`` in [0, 1] (the library's contract), as
uint8 numpy arrays ``(H, W, 3)``, or as float numpy arrays ``(H, W, 3)`` / ``(H, W)`` in [0, 1];
maps as ``(h, w)`` tensors or arrays of any size (they are stretched over the face they are
drawn on).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Rectangle

from adpf.data.prepared import images_to_tensor

PALETTE = "colorblind"
# the colorblind palette reordered so the first five (the paper's five heads) are far apart
_HEAD_ORDER = (0, 1, 2, 4, 9, 3, 5, 8, 7, 6)
# the age regions in the colours the first five heads leave free, so no region reads as a head
_REGION_ORDER = (3, 8, 6, 7, 5)
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


def _luminance(color) -> float:
    """WCAG relative luminance of a colour."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
              for c in matplotlib.colors.to_rgb(color)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_color(color, ratio: float = 3.5) -> tuple[float, float, float]:
    """``color`` darkened just enough for text on white: a WCAG contrast ratio of at least
    ``ratio`` (3.5: above the 3 of large text, short of 4.5, which would make head 5's sky blue
    read as head 1's blue), the hue kept. Head k's titles are
    ``text_color(head_color(k))``: light heads (sky blue, pink, orange) read on the page."""
    rgb = np.asarray(matplotlib.colors.to_rgb(color), dtype=float)
    while 1.05 / (_luminance(rgb) + 0.05) < ratio:
        rgb = rgb * 0.95
    return tuple(float(c) for c in rgb)


def ink_on(color) -> str:
    """"black" or "white", whichever reads better on ``color`` (its WCAG relative luminance
    against the 0.179 crossover where both give the same contrast)."""
    return "black" if _luminance(color) > 0.179 else "white"


def region_color(r: int) -> tuple[float, float, float]:
    """The colour of age region ``r`` (0-based, `adpf.data.aging.REGION_NAMES` order)."""
    palette = sns.color_palette(PALETTE)
    return palette[_REGION_ORDER[r % len(_REGION_ORDER)]]


def as_image(image) -> np.ndarray:
    """``(H, W, 3)`` or ``(H, W)`` float array in [0, 1] from a tensor ``(3, H, W)``, a uint8
    array ``(H, W, 3)`` (read by `images_to_tensor`) or a float array ``(H, W[, 3])``."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        image = images_to_tensor(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    image = np.asarray(image)
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
    """Boolean masks ``(R, H, W)`` drawn over a face in the region colours (`region_color`), with
    an optional legend of ``labels`` beside the face."""
    image = as_image(image)
    masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks (R, H, W), got shape {masks.shape}")
    show_face(ax, image, title)
    for r, mask in enumerate(masks.astype(bool)):
        mask = _stretch(mask, image.shape[:2])
        layer = np.zeros((*mask.shape, 4))
        layer[mask] = (*region_color(r), alpha)
        ax.imshow(layer)
    if labels is not None:
        handles = [Rectangle((0, 0), 1, 1, color=region_color(r), alpha=alpha)
                   for r in range(len(masks))]
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


def plot_box_layouts(layouts: dict[str, Sequence], image_size: int, backgrounds: dict | None = None,
                     size: float = 2.4) -> Figure:
    """Where some models crop P_1..P_n, one panel each: every box in its rank's head colour.

    layouts: panel title → a list of box sets ``(n, 4)`` (x0, y0, x1, y1), e.g. one per seed;
        P_k is labelled on the first set only.
    backgrounds: panel title → a face ``(H, W, 3)`` to draw the boxes on; other panels get an
        empty grey frame of ``image_size`` pixels.
    """
    backgrounds = backgrounds or {}
    fig, axes = grid(len(layouts), len(layouts), size=size)
    for ax, (title, sets) in zip(axes, layouts.items()):
        if title in backgrounds:
            show_face(ax, backgrounds[title])
        else:
            ax.imshow(np.full((image_size, image_size), 0.92), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        for i, boxes in enumerate(sets):
            n = len(np.asarray(boxes).reshape(-1, 4))
            draw_boxes(ax, boxes, labels=[f"P{k + 1}" for k in range(n)] if i == 0 else None, linewidth=1.5)
        ax.set_xlim(-0.5, image_size - 0.5)
        ax.set_ylim(image_size - 0.5, -0.5)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def show_source(obj):
    """The source of a library function or class as a highlighted code block.

    The book shows the library's own code this way, so the page and the library never drift.
    """
    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(obj)}```")


def map_grid(images: Sequence, maps, row_labels: Sequence[str] | None = None,
             col_labels: Sequence[str] | None = None, row_colors: Sequence | None = None,
             size: float = 1.5) -> Figure:
    """A grid of maps over faces: cell (r, c) draws ``maps[r][c]`` over ``images[c]``.

    images: one face per column (a batch ``(C, 3, H, W)`` or a sequence). maps: ``(R, C, h, w)``
    (each cell min-max normalised, as ``overlay_map`` does). Row labels go on the left
    (coloured by ``row_colors``), column labels on top.
    """
    maps = maps.detach().cpu() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1] != len(images):
        raise ValueError(f"maps must be (rows, {len(images)} columns, h, w), got shape {tuple(maps.shape)}")
    rows, cols = maps.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.4, size * rows + 0.3), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            overlay_map(axes[r, c], images[c], maps[r][c],
                        title=col_labels[c] if col_labels is not None and r == 0 else None)
        if row_labels is not None:
            color = text_color(row_colors[r]) if row_colors is not None else "black"
            axes[r, 0].text(-0.06, 0.5, row_labels[r], transform=axes[r, 0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=10, color=color)
    fig.tight_layout()
    return fig


def show_patches(images: Sequence, boxes, patches, labels: Sequence[str] | None = None,
                 colors: Sequence | None = None, titles: Sequence[str] | None = None,
                 size: float = 1.5) -> Figure:
    """One row per face: the face with its boxes, then its patches (the paper's Fig. 11).

    images: ``(B, 3, H, W)`` or a sequence; boxes: ``(B, n, 4)`` (x0, y0, x1, y1); patches:
    ``(B, n, 3, p, p)``, in the same order as the boxes. Each patch is framed in its box's colour
    (head colours unless ``colors``) and titled with its label (P1..Pn unless ``labels``); the
    boxes on the face carry only their colours, since labels on a small face overlap.
    """
    b, n = patches.shape[:2]
    if len(images) != b or tuple(boxes.shape[:2]) != (b, n):
        raise ValueError(f"{len(images)} images, boxes {tuple(boxes.shape)} and patches "
                         f"{tuple(patches.shape)} do not agree on (faces, patches)")
    labels = list(labels) if labels is not None else [f"P{k + 1}" for k in range(n)]
    colors = list(colors) if colors is not None else [head_color(k) for k in range(n)]
    fig, axes = plt.subplots(b, n + 1, figsize=(size * (n + 1), size * b + 0.3), squeeze=False)
    for i in range(b):
        show_face(axes[i, 0], images[i], titles[i] if titles is not None else None)
        draw_boxes(axes[i, 0], boxes[i], colors=colors)
        for k in range(n):
            ax = axes[i, k + 1]
            ax.imshow(as_image(patches[i, k]), vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colors[k])
                spine.set_linewidth(3)
            if i == 0:
                ax.set_title(labels[k], color=text_color(colors[k]))
    fig.tight_layout()
    return fig


def plot_cs(ax: Axes, curves: dict, colors: Sequence | None = None) -> Axes:
    """CS(v) curves (the paper's Fig. 5–8): ``curves`` maps a label to CS(0..V) ``(V + 1,)``."""
    for k, (label, cs) in enumerate(curves.items()):
        cs = np.asarray(cs, dtype=float)
        ax.plot(np.arange(len(cs)), cs, marker="o", markersize=3, label=label,
                color=colors[k] if colors is not None else head_color(k))
    ax.set_xlabel("error level $v$ (years)")
    ax.set_ylabel("CS($v$)")
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False, fontsize=8)
    sns.despine(ax=ax)
    return ax


#: Colours of the models (variants) compared on one axis: the colorblind palette without its
#: vermillion and grey, which are too near its orange and the constant line, and with black.
#: Any two are at least 0.25 apart in RGB (the orange and vermillion were 0.19); the markers
#: tell them apart too.
MODEL_COLORS = ("#0173b2", "#de8f05", "#029e73", "#cc78bc", "#56b4e9", "#ca9161", "#000000",
                "#ece133")
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def model_style(k: int) -> dict:
    """The colour and marker of the ``k``-th model in a figure that compares models."""
    return {"color": MODEL_COLORS[k % len(MODEL_COLORS)],
            "marker": MODEL_MARKERS[k % len(MODEL_MARKERS)]}


def plot_by_heads(settings: dict, figsize=(5.5, 3.0)) -> Figure:
    """Test MAE against the number of heads (Table IX), one dot per seed and the mean ± one
    standard deviation over the seeds, one colour and marker per setting.

    settings: label → rows of a heads record (`adpf.experiments.record_rows`: ``heads``, ``mae``).
    """
    fig, ax = plt.subplots(figsize=figsize)
    shift = 0.08 * (np.arange(len(settings)) - (len(settings) - 1) / 2)
    for k, (label, rows) in enumerate(settings.items()):
        style = model_style(k)
        ax.scatter(rows["heads"] + shift[k], rows["mae"], color=style["color"], alpha=0.35, s=14,
                   zorder=3, marker=style["marker"])
        by = rows.groupby("heads")["mae"]
        ax.errorbar(by.mean().index + shift[k], by.mean(), yerr=by.std(ddof=1), capsize=3,
                    label=label, **style)
    ax.set_xlabel("heads")
    ax.set_ylabel("test MAE (years)")
    ax.set_xticks(sorted({int(n) for rows in settings.values() for n in rows["heads"]}))
    if len(settings) > 1:
        ax.legend(frameon=False, fontsize=8)
    sns.despine(ax=ax)
    fig.tight_layout()
    return fig


def _plot_mean_band(ax: Axes, groups, style: dict, label: str, markersize: float = 4) -> None:
    """One curve per epoch: the mean of ``groups`` (a pandas ``groupby("epoch")[column]``, one value
    per seed) in ``style``'s colour and marker, and a band of ± one sample standard deviation
    (none where an epoch has one seed)."""
    mean, sd = groups.mean(), groups.std().fillna(0.0)
    ax.plot(mean.index, mean.to_numpy(), marker=style["marker"], markersize=markersize,
            color=style["color"], label=label)
    ax.fill_between(mean.index, (mean - sd).to_numpy(), (mean + sd).to_numpy(), color=style["color"],
                    alpha=0.12, linewidth=0)


def plot_fit_curves(settings: dict, figsize=(5.8, 3.2)) -> Figure:
    """Training (dashed) and validation (solid) MAE after every epoch of one stage, the mean over
    seeds, one colour and marker per setting, with a band of ± one standard deviation of the
    validation MAE: where the two curves part, the model learns its training faces by heart;
    where both still fall, it is still learning.

    settings: label → `adpf.experiments.learning_curves` rows of one stage (``seed``, ``epoch``,
    ``train_mae``, ``val_mae``).
    """
    fig, ax = plt.subplots(figsize=figsize)
    for k, (label, rows) in enumerate(settings.items()):
        style = model_style(k)
        by = rows.groupby("epoch")
        _plot_mean_band(ax, by["val_mae"], style, label=f"{label}: validation", markersize=3)
        train = by["train_mae"].mean()
        ax.plot(train.index, train.to_numpy(), linestyle="--", color=style["color"],
                label=f"{label}: training")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_ylabel("MAE (years)")
    ax.legend(frameon=False, fontsize=8)
    sns.despine(ax=ax)
    fig.tight_layout()
    return fig


def plot_stage_curves(curves, order: Sequence[str], constant: float, figsize=(7.0, 3.2),
                      stage1: Sequence[str] = ("ADPF", "ADPF w/SA", "ADPF w/o diversity loss")) -> Figure:
    """Validation MAE after every epoch, two panels: stage 1 (AttentionNet) and stage 2 with the
    one-stage baselines; the mean over seeds with a band of ± one standard deviation.

    curves: `adpf.experiments.learning_curves` rows (model, seed, stage, epoch, val_mae).
    order: the models in the order of their colours (`model_style`). constant: the MAE of
    always answering the mean training age (a dashed line). stage1: the models whose stage 1 is
    drawn, those with an AttentionNet of their own (by default ADPF's, which ADPF w/o ranking
    and AttentionNet alone share, and the two ablations that train their own). One legend, below
    the panels, outside the data (a legend beside them widened the figure, and the page shrank
    all its text to fit).
    """
    own_stage1 = curves["model"].isin(list(stage1))
    parts = ((curves[(curves["stage"] == "attention") & own_stage1], "stage 1: AttentionNet"),
             (curves[curves["stage"].isin(["fusion", "single"])], "stage 2 and the baselines"))
    styles = {m: model_style(k) for k, m in enumerate(order)}
    fig, axes = plt.subplots(1, 2, figsize=figsize, sharey=True)
    for ax, (part, title) in zip(axes, parts):
        for model in [m for m in order if m in set(part["model"])]:
            _plot_mean_band(ax, part[part["model"] == model].groupby("epoch")["val_mae"], styles[model],
                           label=model)
        ax.axhline(constant, color="0.4", linestyle="--", label="always the mean age")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_ylabel("validation MAE (years)")
        sns.despine(ax=ax)
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [m for m in order if m in handles] + ["always the mean age"]
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ncol in range(min(4, len(labels)), 0, -1):  # as many columns as fit the figure's width
        legend = fig.legend([handles[m] for m in labels], labels, loc="upper center",
                            bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False, fontsize=10)
        if ncol == 1 or legend.get_window_extent(renderer).width <= fig.bbox.width:
            break
        legend.remove()
    return fig


def plot_head_entropy(entropies: dict[str, Sequence[Sequence[float]]], flat: float,
                      figsize=(5.6, 3.0)) -> Figure:
    """Each head's attention entropy over log N (`adpf.evaluate.head_entropy`), heads in ranked
    order P_1..P_n, one line per trained AttentionNet (seed), one colour per group.

    entropies: group label → one list per seed of the n heads' entropies (ranked order).
    flat: the level from which a head counts as flat (a dashed line; 1 is uniform attention).
    """
    fig, ax = plt.subplots(figsize=figsize)
    for k, (label, seeds) in enumerate(entropies.items()):
        style = model_style(k)
        for i, values in enumerate(seeds):
            ranks = np.arange(1, len(values) + 1)
            ax.plot(ranks, values, marker=style["marker"], markersize=5, color=style["color"], alpha=0.85,
                    label=label if i == 0 else None)
    ax.axhline(flat, color="0.4", linestyle="--", label=f"flat: within {1 - flat:.0%} of uniform")
    n = max(len(v) for seeds in entropies.values() for v in seeds)
    ax.set_xticks(np.arange(1, n + 1), [f"$P_{k}$" for k in range(1, n + 1)])
    ax.set_xlabel("head, in ranked order")
    ax.set_ylabel("attention entropy / log N")
    ax.set_ylim(top=1.005)
    sns.despine(ax=ax)
    fig.tight_layout()
    # below the axes, outside the data (the lines cross the whole panel)
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               frameon=False, fontsize=9)
    return fig


def plot_attention_share(epochs: Sequence[int], share, chance: float, lift, regions: Sequence[str],
                         figsize=(9.5, 3.6)) -> Figure:
    """Where the heads' attention lands, two panels.

    Left: ``share`` ``(len(epochs), n)``, the share of each head's map on the age regions after
    every epoch, one line per head (`head_color`), with ``chance`` dashed and the legend below
    the panel. Right: ``lift`` ``(n, R)``, each head's share on each of the ``regions`` divided by
    the region's area (1 is chance), as a heatmap with the values printed in its cells. Its head
    labels are horizontal and its region labels vertical, so that none covers another.
    """
    import pandas as pd

    share, lift = np.asarray(share, dtype=float), np.asarray(lift, dtype=float)
    heads = [f"head {k + 1}" for k in range(share.shape[1])]
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize, gridspec_kw={"width_ratios": [1.3, 1]})
    for k, label in enumerate(heads):
        left.plot(epochs, share[:, k], marker="o", color=head_color(k), label=label)
    left.axhline(chance, color="0.4", linestyle="--", label="chance (area)")
    left.set(xlabel="epoch", ylabel="share of the map on age regions", xticks=list(epochs))
    left.legend(frameon=False, fontsize=9, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    sns.despine(ax=left)
    table = pd.DataFrame(lift, index=heads, columns=[r.replace("_", " ") for r in regions])
    sns.heatmap(table, annot=True, fmt=".1f", cmap="magma", ax=right)
    right.collections[0].colorbar.set_label("share ÷ area", fontsize=11)
    right.tick_params(axis="y", labelrotation=0)  # seaborn may turn them vertical, on top of each other
    right.tick_params(axis="x", labelrotation=90)
    right.set_title("after training: each head on each region")
    fig.tight_layout()
    return fig


def draw_learning_paths(ax: Axes, sizes: Sequence[int], widths: Sequence[int],
                        colors: Sequence | None = None) -> Axes:
    """FusionNet's main stream as a row of stages, with patch P_k joining stage k (Eq. 8).

    sizes, widths: the side and channel count of each stage's output. Under the stream, one
    coloured line per patch runs from the stage it joins to the FC layer: its length is the
    patch's learning path (P_1 the longest).
    """
    n = len(sizes)
    colors = list(colors) if colors is not None else [head_color(k) for k in range(n)]
    boxes = ["stem"] + [f"stage {k + 1}\n{s}×{s}×{c}" for k, (s, c) in enumerate(zip(sizes, widths))] + ["FC"]
    for i, text in enumerate(boxes):
        ax.add_patch(Rectangle((i * 1.4, 0), 1.1, 1, facecolor="0.93", edgecolor="0.3"))
        ax.text(i * 1.4 + 0.55, 0.5, text, ha="center", va="center", fontsize=10)
        if i:
            ax.annotate("", xy=(i * 1.4, 0.5), xytext=(i * 1.4 - 0.3, 0.5),
                        arrowprops=dict(arrowstyle="->", color="0.3"))
    end = (n + 1) * 1.4 + 0.55
    for k in range(n):
        x, y = (k + 1) * 1.4 + 0.55, -0.45 - 0.3 * k
        ax.plot([x, end], [y, y], color=colors[k], linewidth=3, solid_capstyle="butt")
        ax.annotate("", xy=(x, 0), xytext=(x, y), arrowprops=dict(arrowstyle="->", color=colors[k], lw=2))
        ax.text(x - 0.12, y, f"P{k + 1}", ha="right", va="center", fontsize=11, color=text_color(colors[k]))
    ax.set_xlim(-0.2, end + 0.7)
    ax.set_ylim(-0.7 - 0.3 * n, 1.2)
    ax.set_axis_off()
    return ax


def draw_pipeline(image, maps, boxes, patches, age: str | None = None, size: float = 0.85) -> Figure:
    """ADPF in one picture: the face, AttentionNet, the ranked maps M_k with their boxes, the
    patches P_k, and FusionNet, where patch P_k joins main-stream stage k.

    image: one face ``(3, H, W)`` or ``(H, W, 3)``; maps: ``(n, h, w)`` in ranked order (M_1
    first); boxes: ``(n, 4)`` (x0, y0, x1, y1) pixels; patches: ``(n, 3, p, p)``, box k's crop;
    age: the text at FusionNet's output. Row k holds M_k and P_k, level with stage k.
    """
    n = len(maps)
    if len(boxes) != n or len(patches) != n:
        raise ValueError(f"{n} maps, {len(boxes)} boxes and {len(patches)} patches: need one of each per head")
    colors = [head_color(k) for k in range(n)]
    fig = plt.figure(figsize=(8.4 * size, (n * 0.95 + 0.9) * size))
    grid = fig.add_gridspec(n, 7, width_ratios=[2.2, 0.45, 1.5, 1, 0.55, 1, 2.0], left=0.01, right=0.99,
                            top=1 - 0.7 / (n + 1), bottom=0.1, wspace=0.05, hspace=0.35)
    face = fig.add_subplot(grid[:, 0])
    show_face(face, image, "aligned face")
    attention = fig.add_subplot(grid[:, 2])
    fusion = fig.add_subplot(grid[:, 6])
    for ax in (attention, fusion):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_axis_off()
    attention.add_patch(Rectangle((0.05, 0.25), 0.9, 0.5, facecolor="0.93", edgecolor="0.3"))
    attention.text(0.5, 0.5, "AttentionNet\n\nstem → X\nRMHHA:\n$n$ heads,\nranked by $a_k$",
                   ha="center", va="center", fontsize=9)
    map_axes, patch_axes = [], []
    for k in range(n):
        ax = fig.add_subplot(grid[k, 3])
        overlay_map(ax, image, maps[k], title=None)
        draw_boxes(ax, [boxes[k]], colors=[colors[k]], linewidth=1.5)
        ax.set_title(f"M{k + 1}", color=text_color(colors[k]), fontsize=10, pad=2)
        map_axes.append(ax)
        ax = fig.add_subplot(grid[k, 5])
        ax.imshow(as_image(patches[k]), vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colors[k])
            spine.set_linewidth(2.5)
        ax.set_title(f"P{k + 1}", color=text_color(colors[k]), fontsize=10, pad=2)
        patch_axes.append(ax)

    def arrow(start, end, color="0.3", text=None):
        fig.add_artist(FancyArrowPatch(start, end, transform=fig.transFigure, arrowstyle="-|>",
                                       mutation_scale=10, color=color, lw=1.2, shrinkA=0, shrinkB=0))
        if text is not None:
            fig.text((start[0] + end[0]) / 2, max(start[1], end[1]) + 0.012, text, ha="center",
                     va="bottom", fontsize=8, color="0.3")

    def middle(ax, side):
        box = ax.get_position()
        return (box.x1 if side == "right" else box.x0), (box.y0 + box.y1) / 2

    # FusionNet: the main stream runs down the panel, one stage per row, level with P_k
    stream = fusion.get_position()
    x_box, w_box = 0.3, 0.45
    fusion.text(0.95, 0.5, "FusionNet", ha="center", va="center", rotation=90, fontsize=10, weight="bold")
    ys = []  # each stage's height in the panel, top to bottom
    for k, ax in enumerate(patch_axes):
        y = (middle(ax, "left")[1] - stream.y0) / stream.height
        fusion.add_patch(Rectangle((x_box, y - 0.05), w_box, 0.1, facecolor="0.93", edgecolor="0.3"))
        fusion.text(x_box + w_box / 2, y, f"stage {k + 1}", ha="center", va="center", fontsize=9)
        arrow(middle(ax, "right"), (stream.x0 + x_box * stream.width, middle(ax, "left")[1]), colors[k])
        if k:  # an arrow from the stage above
            fusion.annotate("", xy=(x_box + w_box / 2, y + 0.05), xytext=(x_box + w_box / 2, ys[-1] - 0.05),
                            arrowprops=dict(arrowstyle="-|>", color="0.3"))
        ys.append(y)
    first, previous = ys[0], ys[-1]
    fusion.annotate(age or "age", xy=(x_box + w_box / 2, previous - 0.05), xytext=(x_box + w_box / 2, -0.09),
                    ha="center", va="center", fontsize=10, annotation_clip=False,
                    arrowprops=dict(arrowstyle="<|-", color="0.3"))
    # the face enters AttentionNet, and FusionNet's main stream from above
    arrow(middle(face, "right"), middle(attention, "left"))
    top, entry = 1 - 0.35 / (n + 1), stream.x0 + (x_box + w_box / 2) * stream.width
    first_stage = stream.y0 + (first + 0.05) * stream.height
    # from the face's top edge right of its centred title, where the drawn image (not its slot) ends
    face.apply_aspect()
    shown = face.get_position()
    x_out = shown.x0 + 0.85 * shown.width
    fig.add_artist(Line2D([x_out, x_out, entry], [shown.y1, top, top], transform=fig.transFigure,
                          color="0.3", lw=1.2))
    arrow((entry, top), (entry, first_stage))
    fig.text(x_out + 0.01, top + 0.005, "the face, into FusionNet's main stream",
             fontsize=8, color="0.3", va="bottom")
    for k, ax in enumerate(map_axes):
        arrow(middle(attention, "right"), middle(ax, "left"), colors[k])
        arrow(middle(ax, "right"), middle(patch_axes[k], "left"), colors[k], text="crop" if k == 0 else None)
    return fig
