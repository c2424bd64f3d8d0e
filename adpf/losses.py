"""The losses of ADPF and the age read-out: diversity (Eq. 7), age distribution and age (Eq. 9–10),
MAE + KL (Eq. 11–13), and the AttentionNet objective (Eq. 14).

Open choices made here (numbered as in ``book/open_choices.md``, "choice N"):

4. Eq. 9 as written is a no-op after a softmax; ``age_distribution(mode="as_written")``
   applies it anyway, ``mode="raw"`` applies it to the raw outputs (``config.eq9``). The KL
   of Eq. 12 reads log o' from ``log_age_distribution``: a log-softmax for the printed form
   (exact, also for saturated outputs), a floored log for the raw form.
5. The target of Eq. 12 is a Gaussian with σ = ``config.sigma`` years over the classes
   age_min..age_max, renormalised over those classes (so ages at or beyond the edges
   still give a distribution that sums to one).
11. The diversity loss (Eq. 7) compares each head's map shifted to a minimum of zero and
    scaled to unit L2 norm (``unit_maps``, ``config.diversity_maps="unit"``): each pair's term
    is a cosine, so L_div = n(n−1) × the head overlap; why, in ``attention_net_loss``.
12. Every loss is a mean over the batch (Eq. 11 says so; Eq. 7 and 12 are per image and
    are averaged the same way so that λ does not depend on the batch size).
15. The reported ± is the predicted distribution's standard deviation times
    ``config.std_scale``, fitted on validation faces after training (``predict_age``).
16. L_AE = w · L_MAE + L_KL (Eq. 13) with w = ``config.mae_weight``, the paper's 1 by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from adpf.config import ADPFConfig


class NonFiniteOutputError(ValueError):
    """The network output holds NaN or ±inf, so no age can be read from it (Eq. 9–10).

    Raised by `predict_age` (and so by ``evaluate.predict``); ``rows`` are the positions of the
    affected rows in the batch. A model whose weights are NaN gives NaN for every face: it is
    broken, not weak, and is never scored as if it had answered the uniform distribution.
    """

    def __init__(self, message: str, rows: list[int] | None = None):
        super().__init__(message)
        self.rows = rows or []


@dataclass
class Losses:
    """A total loss and its parts (each a scalar tensor; ``diversity`` is None for L_AE alone)."""

    total: Tensor
    mae: Tensor
    kl: Tensor
    diversity: Tensor | None = None


def age_classes(config: ADPFConfig, like: Tensor | None = None) -> Tensor:
    """The age labels g_p = age_min..age_max ``(q,)`` (on ``like``'s device and float dtype)."""
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    device = like.device if like is not None else None
    return torch.arange(config.age_min, config.age_max + 1, dtype=dtype, device=device)


def normalize_maps(maps: Tensor) -> Tensor:
    """Each map shifted to a minimum of zero and scaled to sum to one over space ``(B, n, h, w)``.

    The diversity loss on these maps is bounded, is zero exactly when the heads' supports
    (above their minima) are disjoint, and cannot be lowered by scaling a map up or flipping
    its sign; the shift matches how ``maps_to_boxes`` read a map under its earlier rule
    (min-max normalised; it now measures from the map's median), so less overlap here means
    less overlap between patches. A flat map has no support and
    becomes uniform (it overlaps every other head, so the loss discourages it).
    """
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    total = shifted.sum(dim=(-2, -1), keepdim=True)
    uniform = torch.full_like(maps, 1.0 / (maps.shape[-2] * maps.shape[-1]))
    return torch.where(total > 0, shifted / total.clamp_min(torch.finfo(maps.dtype).tiny), uniform)


def unit_maps(maps: Tensor) -> Tensor:
    """Each map shifted to a minimum of zero and scaled to unit L2 norm over space ``(B, n, h, w)``.

    On these maps each pair's Σ_{h,w} term of Eq. 7 is the cosine similarity of the two heads'
    shifted maps (``evaluate.head_similarity``), so L_div is n(n−1) times the mean pairwise head
    overlap: bounded by n(n−1), zero exactly when the heads' supports (above their minima) are
    disjoint, the same at every map resolution, and unchanged by adding a constant to a map or
    scaling it by a positive factor (it cannot be lowered by shrinking or by flipping the sign).
    A map with no contrast (its spread below float rounding of its values) becomes the uniform
    unit map 1/√(h·w) and passes no gradient: its direction is undefined. Exactly disjoint maps
    (L_div = 0) need ties at a map's minimum, where autograd returns a subgradient of the min
    that is not zero; real maps have no such ties.
    """
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    norm = torch.linalg.vector_norm(shifted, dim=(-2, -1), keepdim=True)
    scale = torch.linalg.vector_norm(maps, dim=(-2, -1), keepdim=True)
    flat = norm <= torch.finfo(maps.dtype).eps * scale + torch.finfo(maps.dtype).tiny
    uniform = torch.full_like(maps, (maps.shape[-2] * maps.shape[-1]) ** -0.5)
    return torch.where(flat, uniform, shifted / torch.where(flat, torch.ones_like(norm), norm))


def diversity_loss(maps: Tensor) -> Tensor:
    """Eq. 7: Σ_{n1≠n2} Σ_{h,w} HA_n1 · HA_n2, summed over ordered pairs and averaged over the batch.

    Computed as Σ_{h,w} [(Σ_n HA_n)² − Σ_n HA_n²], which equals the double sum.

    Args:
        maps: ``(B, n, h, w)``.
    Returns:
        a scalar.
    """
    total = maps.sum(dim=1)
    return (total.square() - maps.square().sum(dim=1)).sum(dim=(-2, -1)).mean()


def age_distribution(logits: Tensor, mode: Literal["as_written", "raw"] = "as_written") -> Tensor:
    """Eq. 9: the predicted age distribution o' ``(B, q)`` from the network output ``(B, q)``.

    ``"as_written"``: softmax, then o'_p = max(0, o_p) / Σ_t max(0, o_t). The second step is a
    no-op (a softmax has no negatives and sums to one); it is kept so the code reads like the
    paper. ``"raw"``: the same rule on the raw outputs; a row with no positive output falls
    back to the uniform distribution (and then passes no gradient to that row's logits).
    A row with a NaN or infinite output gives NaN (never the uniform fallback).
    """
    if mode == "as_written":
        probs = torch.softmax(logits, dim=-1)
    elif mode == "raw":
        probs = logits
    else:
        raise ValueError(f"mode must be 'as_written' or 'raw', got {mode!r}")
    positive = probs.clamp_min(0)
    total = positive.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(positive, 1.0 / positive.shape[-1])
    return torch.where(total == 0, uniform, positive / total.clamp_min(torch.finfo(positive.dtype).tiny))


def expected_age(probs: Tensor, ages: Tensor) -> Tensor:
    """Eq. 10: E = Σ_p o'_p · g_p. probs ``(B, q)``, ages ``(q,)`` → ``(B,)``."""
    return probs @ ages


def age_std(probs: Tensor, ages: Tensor) -> Tensor:
    """The standard deviation of the predicted age distribution ``(B,)``: the prediction's uncertainty."""
    mean = expected_age(probs, ages)
    var = (probs * (ages[None, :] - mean[:, None]).square()).sum(dim=-1)
    return var.clamp_min(0).sqrt()


def predict_age(logits: Tensor, config: ADPFConfig) -> tuple[Tensor, Tensor]:
    """Predicted age and its uncertainty ``(B,)``, ``(B,)`` from the network output ``(B, q)`` (Eq. 9–10).

    The uncertainty is the standard deviation of the predicted age distribution times
    ``config.std_scale`` (1 until a training has calibrated it on validation faces).
    Raises `NonFiniteOutputError` when any output is NaN or ±inf.
    """
    bad = ~torch.isfinite(logits).all(dim=-1)
    if bad.any():
        rows = torch.nonzero(bad).flatten().tolist()
        nan = int(logits.isnan().any(dim=-1).sum())
        raise NonFiniteOutputError(
            f"the network output is not finite for {len(rows)} of {len(logits)} faces ({nan} with NaN, "
            f"{len(rows) - nan} with ±inf only): the model's weights or its input images are not finite",
            rows)
    probs = age_distribution(logits, config.eq9)
    ages = age_classes(config, probs)
    return expected_age(probs, ages), config.std_scale * age_std(probs, ages)


def mae_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Eq. 11: (1/b) Σ_b |E_b − GT_b|. Both ``(B,)``."""
    return (predicted - target).abs().mean()


def gaussian_label_distribution(age: Tensor, ages: Tensor, sigma: float) -> Tensor:
    """The target P of Eq. 12: a Gaussian over the classes centred on the true age ``(B, q)``.

    P(p) ∝ exp(−(g_p − age)² / 2σ²), normalised over the q classes (computed as a softmax, so an
    age far outside the range puts its mass on the nearest edge class instead of underflowing).
    age ``(B,)``, ages ``(q,)``.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return torch.softmax(-(ages[None, :] - age[:, None]).square() / (2 * sigma ** 2), dim=-1)


def log_age_distribution(logits: Tensor, mode: Literal["as_written", "raw"] = "as_written",
                         floor: float = 1e-8) -> Tensor:
    """log o' of Eq. 9 ``(B, q)`` from the network output ``(B, q)``: what the KL of Eq. 12 reads.

    ``"as_written"``: log_softmax(logits). Eq. 9's renormalisation is a no-op after a softmax,
    so this is exactly log o', computed without forming o' first: it stays finite and exact
    when the softmax saturates, and the gradient of ``kl_loss`` with respect to the logits is
    softmax − P for every output (a clamp of o' before the log would cut that gradient to zero
    on every class whose probability fell below the clamp — for a confident wrong prediction,
    on every class where the target has mass).
    ``"raw"``: log max(o', ``floor``) with o' = ``age_distribution(logits, "raw")``. Here a
    clamp is unavoidable: every class whose raw output is ≤ 0 has o' = 0 exactly, and the KL
    against a target with mass there would be infinite. Such a class gets no gradient either
    way (max(0, ·) passes none), and neither does a class with 0 < o' < ``floor``.
    """
    if mode == "as_written":
        return torch.log_softmax(logits, dim=-1)
    return age_distribution(logits, mode).clamp_min(floor).log()


def kl_loss(target: Tensor, log_probs: Tensor) -> Tensor:
    """Eq. 12: Σ_p P(p) log(P(p) / P'(p)) = Σ_p P(p) (log P(p) − log P'(p)), averaged over the batch.

    Takes log P' (``log_age_distribution``), not P', so that no probability is rounded to zero
    before its log. Terms with P(p) = 0 contribute 0 (also where log P'(p) = −inf).
    target ``(B, q)`` (rows sum to one), log_probs ``(B, q)``.
    """
    cross = torch.where(target > 0, target * log_probs, torch.zeros_like(log_probs))
    return (torch.xlogy(target, target) - cross).sum(dim=-1).mean()


def age_estimation_loss(logits: Tensor, age: Tensor, config: ADPFConfig) -> Losses:
    """Eq. 13: L_AE = w · L_MAE + L_KL, w = ``config.mae_weight`` (the paper's: 1). logits ``(B, q)``, age ``(B,)`` in years."""
    probs = age_distribution(logits, config.eq9)
    ages = age_classes(config, probs)
    age = age.to(probs.dtype)
    mae = mae_loss(expected_age(probs, ages), age)
    kl = kl_loss(gaussian_label_distribution(age, ages, config.sigma), log_age_distribution(logits, config.eq9))
    return Losses(total=config.mae_weight * mae + kl, mae=mae, kl=kl)


#: The map scaling of each ``config.diversity_maps`` (Eq. 7 reads the scaled maps).
DIVERSITY_MAPS = {"unit": unit_maps, "normalized": normalize_maps, "raw": lambda maps: maps}


def attention_net_loss(logits: Tensor, age: Tensor, maps: Tensor, config: ADPFConfig) -> Losses:
    """Eq. 14: L_AttentionNet = L_AE + λ · L_div, with λ = ``config.diversity_weight``.

    ``maps`` ``(B, n, h, w)`` are the unweighted hybrid maps (``AttentionOutput.maps``), scaled
    by ``DIVERSITY_MAPS[config.diversity_maps]`` before Eq. 7. The paper gives λ = 0.01 but not
    the scale of the maps, which decides what λ means. Measured at initialisation (untrained
    AttentionNet, batches of 32 drawn faces, 3 seeds × 2 batches; ``benchmarks/diversity_gradient.py``),
    the ratio ||∇ λ L_div|| / ||∇ L_AE|| on the RMHHA parameters, median (min–max):

    ============  ====================  ======================
    scaling       cpu preset (16×16)    paper preset (32×32)
    ============  ====================  ======================
    raw           82 (54–224)           384 (102–871)
    normalized    4e-5 (2e-5–1e-4)      3e-6 (2e-6–9e-6)
    mean one      2.8 (1.2–8.0)         3.2 (1.6–9.9)
    unit (L2)     0.053 (0.026–0.18)    0.016 (0.004–0.04)
    ============  ====================  ======================

    Raw maps make L_div the main objective (and it can fall without bound by flipping a map's
    sign); maps that sum to one make it vanish; mean-one maps still outweigh the age loss.
    Unit maps (the default) give a pull of a few per cent of the age loss's, and a loss with a
    meaning: n(n−1) times the mean head overlap that ``evaluate.head_overlap`` reports. It acts:
    AttentionNet alone (cpu preset, book recipe, 4 epochs, 2,100 drawn faces, seeds 0–2) ends with
    a validation head overlap of 0.872 ± 0.001 with λ = 0.01 and 0.896 ± 0.018 with λ = 0 (lower
    with the loss for every seed, by 0.010–0.047; 0.91 at initialisation), and puts slightly more
    attention on the true age regions (0.099 ± 0.001 vs 0.095 ± 0.003, uniform 0.093);
    ``benchmarks/diversity_overlap.py``.
    """
    ae = age_estimation_loss(logits, age, config)
    div = diversity_loss(DIVERSITY_MAPS[config.diversity_maps](maps))
    return Losses(total=ae.total + config.diversity_weight * div, mae=ae.mae, kl=ae.kl, diversity=div)
