"""One config object that names every size of ADPF, and the named presets.

Every open choice of the method (``book/open_choices.md``, choices 1–22) that is cheap to
make configurable is a field here; the docstring of each field says what the paper
gives and what this project chose where the paper is silent.

Presets
-------
``paper``
    As close to the paper as its text allows: 128×128 input, X = 32×32×500, 5 heads
    (c_head = 100), λ = 0.01, ages 0..100.
``cpu``
    The same architecture at 64×64 with narrow layers; a stage trains in minutes on 2 cores.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

Variant = Literal["adpf", "attention_only", "plain_cnn", "fixed_patches", "resnet18"]


@dataclass(frozen=True)
class ADPFConfig:
    """All sizes and switches of ADPF, its ablations and its baselines.

    Sizes
    -----
    image_size: side of the square aligned face fed to both networks (paper: 128).
    in_channels: colour channels of the face (3).
    stem_channels: widths of the AttentionNet stem's conv stages; each stage but the first
        halves the resolution. Book/open_choices.md, choice 1: the paper only fixes the
        stem's output X.
    x_size: spatial side of X, the RMHHA input (paper: 32).
    x_channels: channels of X, c_p = c_head · heads (paper: 500).
    heads: number of hybrid-attention heads n (paper: 5; Table IX sweeps it).
    key_channels: c_K = c_Q of each head's self-attention (book/open_choices.md, choice 2).
    value_channels: c_V of each head's self-attention and channel attention
        (book/open_choices.md, choice 2).
    ca_reduction: bottleneck ratio of the channel-attention FC1 (c_V → c_V / r;
        book/open_choices.md, choice 2).
    fusion_channels: widths of FusionNet's main-stream stages; stage k (1-based) receives
        patch P_k, so there is one stage per head (book/open_choices.md, choice 8).
    patch_size: side of each patch after cropping and resizing (book/open_choices.md, choice 7).
    patch_channels: width of each patch's own short stream of conv blocks
        (book/open_choices.md, choice 8).
    patch_stream: how each patch's stream reaches its joining stage's size (book/open_choices.md,
        choice 8; ``networks`` module docstring): "strided" (default), a conv block at the patch
        size then stride-2 conv blocks, so the downsampling is learned; "resize", two conv blocks
        at the patch size then an antialiased bilinear resize (the earlier design, kept for
        comparison: ``benchmarks/results/patch_streams.md``).

    Age output
    ----------
    age_min, age_max: the age classes g_p = age_min..age_max, q = age_max - age_min + 1
        (book/open_choices.md, choice 5; paper: 0..100).
    sigma: standard deviation (years) of the Gaussian label distribution of Eq. 12
        (book/open_choices.md, choice 5; DLDL uses 2).
    mae_weight: the weight w of L_MAE in Eq. 13, L_AE = w · L_MAE + L_KL (paper: 1, with L_MAE in
        years; book/open_choices.md, choice 16).
    std_scale: the factor the standard deviation of the predicted age distribution is multiplied
        by to give the reported ± (book/open_choices.md, choice 15). 1.0 while training; after
        training, ``adpf.train.train`` fits it on the validation faces so that ±1σ holds 68.3 % of
        them (``evaluate.fit_std_scale``) and stores it in the checkpoint's config. It changes no
        prediction, only the ±, and is left out of the cache keys and of ``check_config``.
    eq9: "as_written" applies Eq. 9 after the softmax, where it is a no-op; "raw" applies
        max(0, ·) and renormalisation to the raw outputs instead (book/open_choices.md, choice 4).

    Switches (the ablations of Table VII and the baselines)
    --------------------------------------------------------
    variant: "adpf" (AttentionNet + FusionNet), "attention_only" (AttentionNet alone),
        "plain_cnn" (FusionNet's main stream without attention or patches),
        "fixed_patches" (FusionNet fed with patches at the same place in every image),
        "resnet18" (a ResNet-18 of about ADPF's size, not in the paper: ``networks.ReferenceResNet``).
    fusion_head: how FusionNet's last features ``(B, c, t, t)`` reach its age layer (book/open_choices.md,
        choice 8): "pool" averages them over space (one c-vector), "flatten" keeps every position
        (c·t² inputs), as AttentionNet's age layer reads every position of its maps.
    fusion_stem_stride: the stride of FusionNet's first conv block (book/open_choices.md, choice 1):
        2 (default) halves the image before the first stage; 1 keeps the first stage at full
        resolution, as AttentionNet's stem does.
    fusion_block: what each stage of FusionNet's main stream is (book/open_choices.md, choice 1):
        "plain" (default), two conv blocks; "residual", a ResNet basic block (the same two
        convolutions, their sum with a shortcut: ``networks.BasicBlock``).
    reference_width: w, the first stage's width of the ``resnet18`` reference (widths w, 2w,
        4w, 8w; book/open_choices.md, choice 14), set per preset to about ADPF's parameter count.
    attention: "hybrid" (Eq. 5) or "self_sum" (ADPF w/SA: self-attention summed over channels).
    ranking: True ranks heads by a_k (Eq. 6); False feeds patches in head-index order.
    rank_by: "value" ranks by a_k, "abs" by |a_k| (book/open_choices.md, choice 6).
    diversity_weight: λ of Eq. 14 (paper: 0.01; 0 is the "w/o diversity loss" ablation).
    diversity_maps: how each head's map is scaled before Eq. 7 (book/open_choices.md, choice 11: the
        paper is silent; raw maps let L_div fall by shrinking or flipping a map). "unit"
        (default): shifted to a minimum of 0 and scaled to unit L2 norm, so each pair's term is
        the cosine similarity of the two maps and L_div = n(n−1) · head overlap, at any map size
        (``losses.unit_maps``; why: the measured gradient ratios in
        ``losses.attention_net_loss``); "normalized": shifted to 0 and summing to one (its
        gradient is 1e-5 of L_AE's at λ = 0.01); "raw": as they are.

    From maps to patches (book/open_choices.md, choice 7)
    -----------------------------------------------------
    patch_baseline: the level a map is normalised from before thresholding: "median" (default;
        its background) or "min" (the earlier min-max normalisation); its peak goes to 1.
    patch_threshold: a map so normalised is thresholded at this value, or at its spatial mean
        when "mean" (defaults: 0.5 above the median, the half maximum; earlier "mean" of the
        min-max map, which put 94 % of the boxes at the largest side: benchmarks/results/box-rule.md).
    patch_min_frac, patch_max_frac: the box side is clamped to these fractions of the image.
    patch_placement: where ADPF crops its patches (book/open_choices.md, choice 19). "per_face"
        (the paper's): at the boxes of each face's own ranked maps. "rank_median" (not the
        paper's): after stage 1, the boxes of every training face are found once, and every face,
        in training and at test time, is cropped at each rank's median box
        (``patches.rank_median_boxes``, kept in the model as ``ADPF.placed_boxes``). The heads
        still choose where P_1..P_n lie, once for the data set rather than for each face.
    patch_dropout: in training, each face's patch features at each FusionNet stage are dropped
        (set to zero) with this probability and the kept ones scaled by 1 / (1 - patch_dropout),
        so the stages cannot lean on one face's patches alone (book/open_choices.md, choice 22;
        not the paper's). 0 (default): never, as in the paper; at test time nothing is dropped.

    Implementation
    --------------
    attention_impl: "sdpa" (every head at once, the relative logits folded into the query·key
        dot product of one scaled_dot_product_attention call; ``attention.hybrid_attention_heads``)
        or "plain" (each head in turn, explicit matmul + softmax: the reference).
    """

    # sizes
    image_size: int = 128
    in_channels: int = 3
    stem_channels: tuple[int, ...] = (64, 128, 256)
    x_size: int = 32
    x_channels: int = 500
    heads: int = 5
    key_channels: int = 32
    value_channels: int = 64
    ca_reduction: int = 4
    fusion_channels: tuple[int, ...] = (64, 128, 128, 256, 256)
    patch_size: int = 48
    patch_channels: int = 32
    patch_stream: Literal["strided", "resize"] = "strided"
    reference_width: int = 42
    fusion_head: Literal["pool", "flatten"] = "pool"
    fusion_stem_stride: int = 2
    fusion_block: Literal["plain", "residual"] = "plain"
    # age output
    age_min: int = 0
    age_max: int = 100
    sigma: float = 2.0
    eq9: Literal["as_written", "raw"] = "as_written"
    std_scale: float = 1.0
    mae_weight: float = 1.0
    # switches
    variant: Variant = "adpf"
    attention: Literal["hybrid", "self_sum"] = "hybrid"
    ranking: bool = True
    rank_by: Literal["value", "abs"] = "value"
    diversity_weight: float = 0.01
    diversity_maps: Literal["unit", "normalized", "raw"] = "unit"
    # maps to patches
    patch_threshold: float | Literal["mean"] = 0.5
    patch_baseline: Literal["median", "min"] = "median"
    patch_min_frac: float = 0.15
    patch_max_frac: float = 0.6
    patch_placement: Literal["per_face", "rank_median"] = "per_face"
    patch_dropout: float = 0.0
    # implementation
    attention_impl: Literal["sdpa", "plain"] = "sdpa"

    def __post_init__(self) -> None:
        for name in ("heads", "image_size", "in_channels", "x_size", "x_channels", "key_channels",
                     "value_channels", "ca_reduction", "patch_size", "patch_channels", "reference_width",
                     "fusion_stem_stride"):
            if not _whole(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {getattr(self, name)!r}")
        for name in ("stem_channels", "fusion_channels"):
            widths = getattr(self, name)
            if not isinstance(widths, (tuple, list)) or not all(_whole(w) and w >= 1 for w in widths):
                raise ValueError(f"{name} must be a list of whole numbers >= 1, got {widths!r}")
        if not (_whole(self.age_min) and _whole(self.age_max)):
            raise ValueError(f"age_min and age_max must be whole numbers, got {self.age_min!r}, {self.age_max!r}")
        if not (isinstance(self.mae_weight, (int, float)) and 0 <= self.mae_weight < float("inf")):
            raise ValueError(f"mae_weight must be a finite number >= 0, got {self.mae_weight!r}")
        if not (isinstance(self.std_scale, (int, float)) and 0 < self.std_scale < float("inf")):
            raise ValueError(f"std_scale must be a finite number > 0, got {self.std_scale!r}")
        if not (isinstance(self.patch_dropout, (int, float)) and 0 <= self.patch_dropout < 1):
            raise ValueError(f"patch_dropout must be a number in [0, 1), got {self.patch_dropout!r}")
        if not (isinstance(self.sigma, (int, float)) and self.sigma > 0):
            raise ValueError(f"sigma must be a number > 0 (years), got {self.sigma!r}")
        if self.x_channels % self.heads:
            raise ValueError(
                f"x_channels={self.x_channels} must be divisible by heads={self.heads} "
                "(each head takes its own c_head-channel slice)")
        if self.age_max <= self.age_min:
            raise ValueError(f"age_max={self.age_max} must exceed age_min={self.age_min}")
        if self.variant in ("adpf", "fixed_patches") and len(self.fusion_channels) != self.heads:
            raise ValueError(
                f"fusion_channels has {len(self.fusion_channels)} stages but heads={self.heads}: "
                "FusionNet needs one main-stream stage per patch")
        if not 0 < self.patch_min_frac <= self.patch_max_frac <= 1:
            raise ValueError("need 0 < patch_min_frac <= patch_max_frac <= 1")
        if not self.stem_channels or not self.fusion_channels:
            raise ValueError("need non-empty stem_channels and fusion_channels")
        if self.image_size != self.x_size * 2 ** (len(self.stem_channels) - 1):
            raise ValueError(
                f"image_size={self.image_size} must equal x_size={self.x_size} * 2**(len(stem_channels)-1) "
                f"= {self.x_size * 2 ** (len(self.stem_channels) - 1)}: every stem stage but the first halves it")
        if self.patch_threshold != "mean" and not (
                isinstance(self.patch_threshold, (int, float)) and 0 <= self.patch_threshold <= 1):
            raise ValueError(f"patch_threshold must be 'mean' or a number in [0, 1], got {self.patch_threshold!r}")
        for name, allowed in [("variant", ("adpf", "attention_only", "plain_cnn", "fixed_patches", "resnet18")),
                              ("attention", ("hybrid", "self_sum")), ("rank_by", ("value", "abs")),
                              ("eq9", ("as_written", "raw")), ("diversity_maps", ("unit", "normalized", "raw")),
                              ("attention_impl", ("sdpa", "plain")), ("patch_baseline", ("median", "min")),
                              ("fusion_head", ("pool", "flatten")), ("patch_stream", ("strided", "resize")),
                              ("fusion_block", ("plain", "residual")),
                              ("patch_placement", ("per_face", "rank_median"))]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def c_head(self) -> int:
        """Channels of X that each head takes (c_p / n)."""
        return self.x_channels // self.heads

    @property
    def num_classes(self) -> int:
        """q, the number of age classes."""
        return self.age_max - self.age_min + 1

    def replace(self, **changes) -> "ADPFConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ADPFConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown ADPFConfig field(s): {sorted(unknown)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    def fingerprint(self) -> str:
        """A short stable hash of every field (used by the train-or-load cache)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _whole(value) -> bool:
    """An integer (Python or numpy), not a bool, float or string."""
    return hasattr(value, "__index__") and not isinstance(value, bool)


PRESETS: dict[str, ADPFConfig] = {
    "paper": ADPFConfig(),
    "cpu": ADPFConfig(
        image_size=64,
        stem_channels=(16, 32, 48),
        x_size=16,
        x_channels=80,
        heads=5,
        key_channels=16,
        value_channels=16,
        ca_reduction=4,
        fusion_channels=(16, 32, 32, 48, 48),
        patch_size=24,
        patch_channels=16,
        reference_width=11,
    ),
}


def get_preset(name: str, **changes) -> ADPFConfig:
    """The named preset, optionally with some fields changed.

    Changing ``heads`` in a preset rescales ``x_channels`` to keep c_head and adapts the
    number of FusionNet stages, so ``get_preset("paper", heads=3)`` is a valid config.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[name]
    if "heads" in changes and changes["heads"] != base.heads:
        n = changes["heads"]
        changes.setdefault("x_channels", base.c_head * n)
        fc = base.fusion_channels
        changes.setdefault("fusion_channels", tuple(fc[min(i * len(fc) // n, len(fc) - 1)] for i in range(n)))
    return base.replace(**changes)
