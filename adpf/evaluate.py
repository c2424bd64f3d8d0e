"""Evaluation: predictions, MAE, the cumulative score CS(v), per-age-group errors, and attention
diagnostics (per-head maps, ranked boxes, head overlap, the share of attention on the true regions).

The paper reports MAE (Eq. 11 over a test set) and CS(v), the share of test images whose
absolute error is at most v years, drawn as a curve over v. Predicted ages and their
uncertainty always come from the predicted age distribution (``losses.predict_age``, Eq. 9–10).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from adpf.losses import NonFiniteOutputError, normalize_maps, predict_age
from adpf.patches import maps_to_boxes
from adpf.rmhha import AttentionOutput


@dataclass
class Predictions:
    """One prediction per image, in loader order (all ``(N,)`` numpy arrays).

    age: the true age; predicted: E of Eq. 10; std: the standard deviation of the predicted
    age distribution (the model's own uncertainty) times ``config.std_scale`` (the ± as reported,
    book/open_choices.md, choice 15); index: the dataset item's ``index``.
    """

    age: np.ndarray
    predicted: np.ndarray
    std: np.ndarray
    index: np.ndarray

    @property
    def errors(self) -> np.ndarray:
        """predicted − true ``(N,)``."""
        return self.predicted - self.age


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    return next(model.parameters(), torch.empty(0)).device


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, amp: bool = False) -> Predictions:
    """Run ``model`` (in eval mode) over ``loader`` and read each age distribution (Eq. 9–10).

    ``model`` must carry its ``config`` (every network of ``adpf.networks`` does); with
    ``amp`` on a CUDA model the forward runs under bf16 autocast. A NaN or infinite output
    raises `NonFiniteOutputError`, naming the first dataset items (``index``) it hit.
    """
    device = model_device(model)
    ages, predicted, stds, index = [], [], [], []
    with evaluating(model):
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits = model(images).logits
            try:
                mean, std = predict_age(logits.float(), model.config)
            except NonFiniteOutputError as e:
                items = batch["index"][e.rows].tolist()
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                raise NonFiniteOutputError(f"{e} (dataset items {', '.join(map(str, items[:5]))}{more} "
                                           "of the first such batch)", e.rows) from None
            ages.append(batch["age"].float())
            predicted.append(mean.cpu())
            stds.append(std.cpu())
            index.append(batch["index"])
    if not ages:
        raise ValueError("predict: the loader yielded no batch")
    return Predictions(*(torch.cat(x).numpy() for x in (ages, predicted, stds, index)))


def mae(errors: np.ndarray) -> float:
    """Mean absolute error (Eq. 11 over a whole set)."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("mae of an empty set")
    return float(np.abs(errors).mean())


def cs_curve(errors: np.ndarray, v_max: int = 10) -> np.ndarray:
    """CS(v) for v = 0..v_max years ``(v_max + 1,)``: the share of images with |error| ≤ v."""
    errors = np.abs(np.asarray(errors, dtype=np.float64))
    if errors.size == 0:
        raise ValueError("cs_curve of an empty set")
    v = np.arange(v_max + 1)
    return (errors[None, :] <= v[:, None]).mean(axis=1)


def constant_baseline(train_ages: np.ndarray, ages: np.ndarray) -> np.ndarray:
    """The errors ``(N,)`` (predicted − true) of always answering the mean training age.

    The estimator that ignores the face, the floor every model must beat: ``mean(train_ages) −
    ages``, float64. train_ages ``(M,)``, ages ``(N,)``; ``mae``/``cs_curve`` score it like a model.
    """
    train_ages = np.asarray(train_ages, dtype=np.float64)
    if train_ages.size == 0:
        raise ValueError("constant_baseline needs at least one training age")
    return float(train_ages.mean()) - np.asarray(ages, dtype=np.float64)


#: The age bands ``adpf evaluate`` reports: (name, first age, end age), an age a in [first, end).
#: Children up to 12, teenagers, then decades, and everyone from 60 on in one band (the paper
#: reports no bands; these follow the groups age-estimation users ask about).
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-12", 0, 13), ("13-19", 13, 20), ("20-29", 20, 30), ("30-39", 30, 40),
    ("40-49", 40, 50), ("50-59", 50, 60), ("60+", 60, float("inf")))

#: The v of the CS(v) columns of the per-band table.
BAND_CS_LEVELS = (1, 3, 5, 10)

#: The shares of a Gaussian within ±1σ and ±2σ of its mean: erf(k/√2).
GAUSSIAN_COVERAGE = {1: math.erf(1 / math.sqrt(2)), 2: math.erf(2 / math.sqrt(2))}


def age_group_errors(ages: np.ndarray, errors: np.ndarray, bands=AGE_BANDS,
                     cs_levels: tuple[int, ...] = BAND_CS_LEVELS) -> pd.DataFrame:
    """MAE and CS(v) per age band of the true age (`AGE_BANDS` by default).

    ages, errors: ``(N,)``. Returns a DataFrame with columns ``group`` (the band's name),
    ``count``, ``mae`` and ``cs<v>`` for each v of ``cs_levels`` (the share of the band's
    images with |error| ≤ v), youngest band first; bands with no image are left out.
    Ages below the first band (none in a sound dataset) form a last row named "other".
    """
    ages = np.asarray(ages, dtype=np.float64)
    errors = np.abs(np.asarray(errors, dtype=np.float64))
    if ages.shape != errors.shape or ages.ndim != 1:
        raise ValueError(f"ages and errors must be 1-D of the same length, got {ages.shape} and {errors.shape}")
    members = [(name, (ages >= lo) & (ages < hi)) for name, lo, hi in bands]
    members.append(("other", ~np.any([inside for _, inside in members], axis=0)))
    rows = []
    for name, inside in members:
        if inside.any():
            band = errors[inside]
            rows.append({"group": name, "count": int(inside.sum()), "mae": float(band.mean()),
                         **{f"cs{v}": float((band <= v).mean()) for v in cs_levels}})
    return pd.DataFrame(rows, columns=["group", "count", "mae", *(f"cs{v}" for v in cs_levels)])


def calibration(errors: np.ndarray, std: np.ndarray) -> dict:
    """How honest the reported ± is: the share of images whose true age lies within ±1σ and
    ±2σ of the prediction (σ: the std of the predicted age distribution, Eq. 9), beside the
    68.3% and 95.4% a Gaussian of that σ would hold.

    errors, std: ``(N,)``. A share above the Gaussian's means the ± is too wide
    (under-confident), below it too narrow (over-confident). Returns ``within_1std``,
    ``within_2std``, ``gaussian_1std`` and ``gaussian_2std``.
    """
    errors = np.abs(np.asarray(errors, dtype=np.float64))
    std = np.asarray(std, dtype=np.float64)
    if errors.shape != std.shape or errors.size == 0:
        raise ValueError(f"errors and std must be non-empty and of the same shape, got {errors.shape} and {std.shape}")
    return {**{f"within_{k}std": float((errors <= k * std).mean()) for k in GAUSSIAN_COVERAGE},
            **{f"gaussian_{k}std": share for k, share in GAUSSIAN_COVERAGE.items()}}


def fit_std_scale(errors: np.ndarray, std: np.ndarray, coverage: float = GAUSSIAN_COVERAGE[1]) -> float:
    """The factor s that makes ±s·σ hold ``coverage`` of the faces: the ``coverage`` quantile of |error| / σ.

    errors, std ``(N,)`` on faces the model was not trained on (the validation split). Fitted
    for ±1σ only; whether ±2s·σ then holds about 95 % shows whether the errors are near
    Gaussian (``calibration`` on the test split reports both). Book/open_choices.md, choice 15.
    """
    errors, std = np.abs(np.asarray(errors, dtype=np.float64)), np.asarray(std, dtype=np.float64)
    if errors.shape != std.shape or errors.size == 0 or not (std > 0).all():
        raise ValueError("fit_std_scale needs non-empty errors and positive stds of the same shape, "
                         f"got {errors.shape} and {std.shape}")
    return float(np.quantile(errors / std, coverage))


def summarize(predictions: Predictions, v_max: int = 10) -> dict:
    """The metrics of a result record (JSON-serialisable): MAE, CS(0..v_max), MAE and CS per
    age band (`age_group_errors`), the calibration of the predicted std (`calibration`)."""
    groups = age_group_errors(predictions.age, predictions.errors)
    return {
        "mae": mae(predictions.errors),
        "cs": cs_curve(predictions.errors, v_max).tolist(),
        "age_groups": groups.to_dict(orient="list"),
        "calibration": calibration(predictions.errors, predictions.std),
        "mean_std": float(predictions.std.mean()),
        "count": int(len(predictions.age)),
    }


def format_metrics(metrics: dict) -> str:
    """The text ``adpf evaluate`` prints for a `summarize` record: MAE, the CS curve, MAE and
    CS by age band, and the calibration of the reported ± (one σ of the predicted distribution)."""
    bands = pd.DataFrame(metrics["age_groups"]).rename(
        columns=lambda c: f"CS({c[2:]})" if c.startswith("cs") else {"group": "true age", "mae": "MAE"}.get(c, c))
    cal = metrics["calibration"]
    return "\n".join([
        f"MAE {metrics['mae']:.3f}   mean predicted std {metrics['mean_std']:.2f}",
        "CS(v) " + "  ".join(f"{v}:{cs:.3f}" for v, cs in enumerate(metrics["cs"])),
        bands.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
        f"calibration of ±σ: {cal['within_1std']:.1%} of the faces within ±1σ (a Gaussian: "
        f"{cal['gaussian_1std']:.1%}), {cal['within_2std']:.1%} within ±2σ (a Gaussian: {cal['gaussian_2std']:.1%})",
    ])


# --- attention diagnostics -------------------------------------------------------------------

def attention_net_of(model: nn.Module) -> nn.Module:
    """The AttentionNet inside ``model`` (ADPF's ``attention_net``, or the model itself)."""
    net = getattr(model, "attention_net", model)
    if getattr(net.config, "variant", None) not in ("adpf", "attention_only"):
        raise ValueError(f"model of variant {net.config.variant!r} has no attention maps")
    return net


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor) -> AttentionOutput:
    """The per-head maps of a batch ``images`` ``(B, 3, H, W)`` (eval mode, on the model's device)."""
    net = attention_net_of(model)
    with evaluating(net):
        return net(images.to(model_device(net))).attention


@torch.no_grad()
def head_entropy(model: nn.Module, images: Tensor) -> Tensor:
    """How spread each head's self-attention is: the entropy of every pixel's weights (Eq. 1–3)
    over log N, averaged over the pixels, ``(B, n)`` in head order (eval mode).

    1 is a head that averages every pixel alike: its map HA_k is then flat (the mean of its
    values), and a box cut from it is noise. A head that looks at one pixel scores 0.
    """
    net = attention_net_of(model)
    with evaluating(net):
        return entropy_of_heads(net.rmhha, net.features(images.to(model_device(net))))


def entropy_of_heads(rmhha: nn.Module, x: Tensor) -> Tensor:
    """`head_entropy` of RMHHA's heads on its input X ``(B, x_channels, s, s)``: ``(B, n)``."""
    out = []
    for head, z in zip(rmhha.heads, x.chunk(len(rmhha.heads), dim=1)):  # head k reads its channel slice (choice 3)
        weights = head.self_attention.weights(z)  # (B, N, N), one head at a time
        entropy = -(weights * weights.clamp_min(torch.finfo(weights.dtype).tiny).log()).sum(dim=-1)
        out.append(entropy.mean(dim=-1) / math.log(weights.shape[-1]))
    return torch.stack(out, dim=1)


@contextlib.contextmanager
def evaluating(net: nn.Module):
    """``net`` in eval mode inside the block, back in its own mode after it."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def ranked_boxes(attention: AttentionOutput, config) -> Tensor:
    """The patch boxes ``(B, n, 4)`` (x0, y0, x1, y1), P_1 (most important) first.

    The rule ADPF crops with: ``patches.maps_to_boxes`` on ``attention.ranked`` (HA_k · sign(a_k), ranked).
    """
    return maps_to_boxes(attention.ranked, config.image_size, config.patch_threshold, config.patch_min_frac,
                         config.patch_max_frac, baseline=config.patch_baseline)


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """The pixels inside each box: ``(B, n, H, W)`` bool from boxes ``(B, n, 4)`` (x0, y0, x1, y1, x1/y1 exclusive)."""
    ys = torch.arange(height, device=boxes.device)[:, None]
    xs = torch.arange(width, device=boxes.device)[None, :]
    x0, y0, x1, y1 = (c[..., None, None] for c in boxes.unbind(dim=-1))  # (B, n, 1, 1) each
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def box_coverage(boxes: Tensor, regions: Tensor) -> dict[str, int]:
    """How boxes ``(B, n, 4)`` (x0, y0, x1, y1, x1/y1 exclusive) lie on true regions ``(B, H, W)`` bool.

    Pixel counts over the batch: ``covered`` (region pixels inside at least one box),
    ``regions`` (region pixels) and ``boxes`` (pixels inside at least one box; overlapping boxes
    count once). Recall is covered / regions, precision covered / boxes; the counts of several
    batches add up. For the synthetic faces pass ``masks.any(dim=1)``, the union of the age regions.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or regions.dim() != 3 or len(boxes) != len(regions):
        raise ValueError(f"box_coverage expects boxes (B, n, 4) and regions (B, H, W), "
                         f"got {tuple(boxes.shape)} and {tuple(regions.shape)}")
    inside = box_masks(boxes, *regions.shape[1:]).any(dim=1)  # (B, H, W)
    regions = regions.to(device=inside.device, dtype=torch.bool)
    return {"covered": int((inside & regions).sum()), "regions": int(regions.sum()), "boxes": int(inside.sum())}


#: What `patch_reliance` gives FusionNet in place of a face's own patches.
PATCH_SWAPS = ("own patches", "another face's patches", "blank patches")


@torch.no_grad()
def patch_reliance(model: nn.Module, images: Tensor, ages: Tensor) -> dict[str, float]:
    """How much a trained patch model (ADPF or ``fixed_patches``) leans on its patches.

    The MAE on ``images`` ``(B, 3, H, W)`` with true ``ages`` ``(B,)`` when FusionNet (Eq. 8)
    reads each face with its own patches (the model's forward pass), with the patches of
    another face (the batch rolled by one: the same kind of crops, of someone else), and with
    blank mid-grey patches. A network that reads its patches loses accuracy without them; one
    that reads only the face does not. Returns ``{name: MAE}`` for the names of `PATCH_SWAPS`.
    """
    model.eval()
    images, ages = images.to(model_device(model)), ages.to(model_device(model))
    patches = model(images).patches  # (B, n, 3, p, p)
    out = {}
    for name, used in zip(PATCH_SWAPS, (patches, patches.roll(1, dims=0), torch.full_like(patches, 0.5))):
        age, _ = predict_age(model.fusion_net(images, used).logits, model.config)
        out[name] = float((age - ages).abs().mean())
    return out


def head_similarity(maps: Tensor) -> Tensor:
    """Mean cosine similarity between every pair of heads' normalised maps ``(n, n)``.

    maps ``(B, n, h, w)``; each map is first shifted to a minimum of zero (``normalize_maps``),
    so 1 means two heads look at the same places in the same proportions and 0 that they look
    at disjoint places. The diagonal is 1.
    """
    flat = F.normalize(normalize_maps(maps.float()).flatten(2), dim=-1)  # (B, n, h·w)
    return (flat @ flat.transpose(1, 2)).mean(dim=0)


def head_overlap(maps: Tensor) -> float:
    """The mean off-diagonal entry of ``head_similarity``: how much the heads overlap (0..1)."""
    return _off_diagonal_mean(head_similarity(maps))


def _off_diagonal_mean(sim: Tensor) -> float:
    n = sim.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1))) if n > 1 else 0.0


def mask_share(maps: Tensor, masks: Tensor) -> Tensor:
    """The share of each head's attention mass that falls inside each mask ``(B, n, R)``.

    maps ``(B, n, h, w)`` are made distributions (``normalize_maps``) and resized bilinearly to
    the masks' ``(B, R, H, W)`` size. A map spread evenly over the image scores the mask's area
    share; pass ``masks.any(1, keepdim=True)`` for the share on the union of all regions.
    """
    size = masks.shape[-2:]
    up = F.interpolate(normalize_maps(maps.float()), size=size, mode="bilinear", align_corners=False)
    up = up.clamp_min(0)
    up = up / up.sum(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(up.dtype).tiny)
    return torch.einsum("bnhw,brhw->bnr", up, masks.to(up))


@torch.no_grad()
def attention_report(model: nn.Module, loader: DataLoader, max_batches: int | None = None) -> dict:
    """Attention diagnostics over a loader (JSON-serialisable).

    ``head_overlap``: mean pairwise cosine of the heads' normalised maps; ``head_similarity``:
    the full matrix; ``head_entropy``: per head in ranked order, how spread its self-attention
    is (`head_entropy`, 1 = uniform); when items carry ``masks`` (the synthetic set): ``region_share`` per head
    in ranked order (mean share of its mass on the union of the true age regions) and
    ``region_area`` (the union's share of the image, what a uniform map would score). The
    ``box_*`` entries (`box_statistics`, and ``box_region_share`` with masks) describe the boxes
    the model crops at: each face's own (`ranked_boxes`), or an ADPF's ``placed_boxes``.
    """
    sims, shares, areas, boxes, box_shares, entropies, seen = [], [], [], [], [], [], 0
    net = attention_net_of(model)
    config = net.config
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with evaluating(net):  # the stem once a batch, for the maps and the entropies
            x = net.features(batch["image"].to(model_device(net)))
            att = net.rmhha(x)
            entropies.append(entropy_of_heads(net.rmhha, x)[:, att.order].sum(dim=0).cpu())
        sims.append(head_similarity(att.maps) * len(att.maps))
        seen += len(att.maps)
        found = ranked_boxes(att, config)  # (B, n, 4), each face's own
        if getattr(model, "placed_boxes", None) is not None:  # patch_placement="rank_median"
            found = model.placed_boxes.to(found.device).expand_as(found)
        boxes.append(found.cpu())
        if "masks" in batch:
            box_shares.append(box_region_share(found, batch["masks"].to(found.device).any(dim=1)).cpu())
        if "masks" in batch:
            union = batch["masks"].to(att.maps.device).any(dim=1, keepdim=True)
            shares.append(mask_share(att.maps[:, att.order], union)[..., 0].sum(dim=0))
            areas.append(union.float().mean(dim=(1, 2, 3)).sum())
    if not seen:
        raise ValueError("attention_report: the loader yielded no batch")
    sim = torch.stack(sims).sum(dim=0) / seen
    report = {
        "head_overlap": _off_diagonal_mean(sim),
        "head_similarity": sim.cpu().tolist(),
        "head_entropy": (torch.stack(entropies).sum(dim=0) / seen).tolist(),
    }
    report.update(box_statistics(torch.cat(boxes), config))
    if shares:
        report["region_share"] = (torch.stack(shares).sum(dim=0) / seen).cpu().tolist()
        report["region_area"] = float(torch.stack(areas).sum() / seen)
        report["box_region_share"] = torch.cat(box_shares).mean(dim=0).tolist()
    return report


def box_region_share(boxes: Tensor, regions: Tensor) -> Tensor:
    """The share of each box's pixels that lie on the true age regions: ``(B, n)`` from boxes
    ``(B, n, 4)`` and region masks ``(B, S, S)`` bool (their union)."""
    box = box_masks(boxes, *regions.shape[1:])  # (B, n, S, S)
    on = (box & regions[:, None]).sum(dim=(-2, -1)).float()
    return on / box.sum(dim=(-2, -1)).clamp_min(1).float()


def box_statistics(boxes: Tensor, config) -> dict:
    """How the patch boxes ``(N, n, 4)`` of N faces vary: ``box_side_median`` (the median side, a
    share of the image), ``box_side_quartiles`` (25 %, 75 %), ``box_at_clamp`` (the share of boxes
    at the largest side allowed, ``config.patch_max_frac``), ``box_side_median_by_rank`` (P_1..P_n),
    and ``box_centre_spread`` (the standard deviation over faces of each patch's centre, in
    shares of the image, averaged over x, y and the patches: 0 when every face gets the same boxes)."""
    size = config.image_size
    side = (boxes[..., 2] - boxes[..., 0]).double() / size  # (N, n)
    largest = max(1, round(config.patch_max_frac * size)) / size
    centres = torch.stack([boxes[..., 0] + boxes[..., 2], boxes[..., 1] + boxes[..., 3]], dim=-1).double() / (2 * size)
    return {"box_side_median": float(torch.quantile(side.flatten(), 0.5)),
            "box_side_quartiles": [float(q) for q in torch.quantile(side.flatten(), torch.tensor([0.25, 0.75],
                                                                                                 dtype=side.dtype))],
            "box_at_clamp": float((side >= largest - 1e-9).double().mean()),
            "box_side_median_by_rank": torch.quantile(side, 0.5, dim=0).tolist(),
            "box_centre_spread": float(centres.std(dim=0).mean()) if len(boxes) > 1 else 0.0}
