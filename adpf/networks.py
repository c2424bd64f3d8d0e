"""The networks: AttentionNet (stem → X → RMHHA → FC), FusionNet (Eq. 8), ADPF, and the baselines.

Open choices made here (numbered as in ``book/open_choices.md``, "choice N"):

1. Stems. AttentionNet: one stage per ``config.stem_channels`` entry, each two conv blocks
   (conv 3×3 – BatchNorm – ReLU), every stage but the first halving the resolution, then a
   1×1 conv block to X (``x_channels`` at ``x_size``). FusionNet: one stride-2 conv block
   (``config.fusion_stem_stride``), then one stage per head, each two conv blocks, or a ResNet
   basic block with ``config.fusion_block="residual"``; a stage halves the resolution unless the
   main stream is already ``MIN_SIDE`` wide.
8. Patch streams. Each patch has its own stream that brings it to the main stream's size t_k
   at its joining stage, where R = Concat[I, P] feeds the stage. Stage k receives P_k, so P_1
   travels the longest path. ``config.patch_stream`` picks the stream's design:

   - ``"strided"`` (default): a conv block at the patch size p, then stride-2 conv blocks
     (each ⌈side/2⌉) while the side stays ≥ t_k, so the downsampling is learned, as the
     paper's figure of sub-streams suggests; a stream with no stride-2 block gets a second
     block at the patch size. Where the sides do not divide, an adaptive average pool takes
     the last step down (the presets' p = 3·2^j against t_k = 2^i: e.g. cpu P_4, 24 → 12 → 6 →
     pool → 4). A patch smaller than its stage (P_1: 24 → 32, 48 → 64) is upsampled
     bilinearly after its two blocks.
   - ``"resize"``: two conv blocks at the patch size, then an antialiased bilinear resize to
     t_k (the earlier design: P_4 and P_5 arrive as 4×4 averages of patch-size features).

   Measured against each other on the same split and seeds: ``benchmarks/results/patch_streams.md``.
14. The ``resnet18`` reference (not in the paper): ResNet-18's layout at about ADPF's parameter
    count (``ReferenceResNet``, ``config.reference_width``).

Images enter as ``(B, 3, H, W)`` in [0, 1] and are mapped to [-1, 1] inside the model
(fixed, no dataset statistics, so every dataset and the synthetic faces are treated alike).

`parameter_table` counts every variant's parameters (printed by ``adpf info``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adpf.config import ADPFConfig
from adpf.patches import crop_patches, fixed_boxes, maps_to_boxes, rank_median_boxes
from adpf.rmhha import RMHHA, AttentionOutput

MIN_SIDE = 4  # FusionNet's main stream stops halving its resolution at this side


@dataclass
class ModelOutput:
    """What every network of ``build_model`` returns.

    logits: ``(B, q)`` the age output of the network (FusionNet's for ADPF).
    attention: RMHHA's output (attention variants only).
    attention_logits: ``(B, q)`` AttentionNet's own age output (ADPF only).
    boxes: ``(B, n, 4)`` int64 (x0, y0, x1, y1) of P_1..P_n (patch variants only).
    patches: ``(B, n, 3, p, p)`` the cropped patches in [0, 1] (patch variants only).
    """

    logits: Tensor
    attention: AttentionOutput | None = None
    attention_logits: Tensor | None = None
    boxes: Tensor | None = None
    patches: Tensor | None = None


def conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """Conv 3×3 (no bias) – BatchNorm – ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_images(x: Tensor, config: ADPFConfig) -> None:
    """Raise a clear error unless x is a float batch ``(B, in_channels, image_size, image_size)``."""
    expected = (config.in_channels, config.image_size, config.image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected or not x.is_floating_point():
        raise ValueError(f"images must be a float tensor (B, {', '.join(map(str, expected))}) in [0, 1], "
                         f"got {x.dtype} {tuple(x.shape)}")


def normalize_images(x: Tensor) -> Tensor:
    """[0, 1] → [-1, 1]."""
    return 2 * x - 1


class AttentionNet(nn.Module):
    """Stem → X ``(B, x_channels, x_size, x_size)`` → RMHHA → concat of HA_k·a_k → FC → logits ``(B, q)``."""

    def __init__(self, config: ADPFConfig):
        super().__init__()
        self.config = config
        layers, prev = [], config.in_channels
        for i, width in enumerate(config.stem_channels):
            layers += [conv_block(prev, width, stride=1 if i == 0 else 2), conv_block(width, width)]
            prev = width
        self.stem = nn.Sequential(*layers)
        self.to_x = nn.Sequential(nn.Conv2d(prev, config.x_channels, 1, bias=False),
                                  nn.BatchNorm2d(config.x_channels), nn.ReLU(inplace=True))
        self.rmhha = RMHHA(config)
        self.fc = nn.Linear(config.heads * config.x_size ** 2, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """X ``(B, x_channels, x_size, x_size)``, what RMHHA reads, from images ``(B, 3, H, W)``."""
        check_images(x, self.config)
        return self.to_x(self.stem(normalize_images(x)))

    def forward(self, x: Tensor) -> ModelOutput:
        attention = self.rmhha(self.features(x))
        return ModelOutput(logits=self.fc(attention.weighted.flatten(1)), attention=attention)


class PatchStream(nn.Module):
    """Patch P_k's own stream: ``(B, C, p, p)`` → features ``(B, channels, size, size)``.

    ``design`` is ``config.patch_stream`` ("strided" or "resize", see the module docstring and
    book/open_choices.md, choice 8); ``side`` is the side its conv blocks leave, before the last
    step to ``size``.
    """

    def __init__(self, in_channels: int, channels: int, patch_size: int, size: int, design: str):
        super().__init__()
        blocks, side = [conv_block(in_channels, channels)], patch_size
        while design == "strided" and (side + 1) // 2 >= size:
            blocks.append(conv_block(channels, channels, stride=2))
            side = (side + 1) // 2
        if len(blocks) == 1:
            blocks.append(conv_block(channels, channels))
        self.blocks = nn.Sequential(*blocks)
        self.design, self.side, self.size = design, side, size

    def forward(self, patch: Tensor) -> Tensor:
        features = self.blocks(patch)
        if self.side == self.size:
            return features
        if self.design == "strided" and self.side > self.size:
            return F.adaptive_avg_pool2d(features, self.size)
        # in float32: antialiased interpolation has no bfloat16 kernel on the CPU (bf16 autocast)
        return F.interpolate(features.float(), size=(self.size, self.size), mode="bilinear",
                             align_corners=False, antialias=self.side > self.size).to(features.dtype)


def drop_patches(features: Tensor, p: float, training: bool) -> Tensor:
    """Patch dropout (``config.patch_dropout``, book/open_choices.md, choice 22; not the paper's).

    In training each face's patch features ``(B, C, h, w)`` are zeroed with probability ``p``
    and the kept ones scaled by 1 / (1 - p), so their expectation is unchanged; in evaluation,
    or with p = 0, they pass unchanged.
    """
    if not training or p == 0:
        return features
    keep = torch.rand(features.shape[0], 1, 1, 1, device=features.device) >= p  # (B, 1, 1, 1)
    return features * keep.to(features.dtype) / (1 - p)


class FusionNet(nn.Module):
    """Main stream with one stage per head; stage k takes R = Concat[I, P_k] (Eq. 8).

    With ``use_patches=False`` it is the ``plain_cnn`` baseline: the same main stream (depth,
    widths, resolutions), each stage fed with I alone.

    forward(x ``(B, 3, H, W)``, patches ``(B, n, 3, p, p)`` ranked P_1..P_n) → ``ModelOutput``.
    """

    def __init__(self, config: ADPFConfig, use_patches: bool = True):
        super().__init__()
        self.config, self.use_patches = config, use_patches
        widths = config.fusion_channels
        extra = config.patch_channels if use_patches else 0
        self.stem = conv_block(config.in_channels, widths[0], stride=config.fusion_stem_stride)
        self.input_sizes, stages, side, prev = [], [], config.image_size // config.fusion_stem_stride, widths[0]
        for width in widths:
            stride = 2 if side > MIN_SIDE else 1
            self.input_sizes.append(side)
            stages.append(BasicBlock(prev + extra, width, stride) if config.fusion_block == "residual"
                          else nn.Sequential(conv_block(prev + extra, width, stride), conv_block(width, width)))
            side, prev = (side + 1) // 2 if stride == 2 else side, width
        self.stages = nn.ModuleList(stages)
        self.patch_streams = nn.ModuleList(
            PatchStream(config.in_channels, config.patch_channels, config.patch_size, size, config.patch_stream)
            for size in self.input_sizes) if use_patches else None
        last = side if config.fusion_head == "flatten" else 1
        self.fc = nn.Linear(widths[-1] * last * last, config.num_classes)

    def forward(self, x: Tensor, patches: Tensor | None = None) -> ModelOutput:
        check_images(x, self.config)
        if self.use_patches != (patches is not None):
            raise ValueError("this FusionNet " + ("needs" if self.use_patches else "takes no") + " patches")
        p = self.config.patch_size
        if patches is not None and (patches.dim() != 5 or patches.shape[1] != len(self.stages)
                                    or tuple(patches.shape[-2:]) != (p, p)):
            raise ValueError(f"patches must be (B, {len(self.stages)}, C, {p}, {p}), got {tuple(patches.shape)}")
        features = self.stem(normalize_images(x))
        for k, stage in enumerate(self.stages):
            if patches is not None:
                p = drop_patches(self.patch_streams[k](normalize_images(patches[:, k])),
                                 self.config.patch_dropout, self.training)
                features = torch.cat([features, p], dim=1)
            features = stage(features)
        pooled = features.flatten(1) if self.config.fusion_head == "flatten" else features.mean(dim=(2, 3))
        return ModelOutput(logits=self.fc(pooled), patches=patches)


class ADPF(nn.Module):
    """AttentionNet + FusionNet: maps ranked by a_k → boxes → patches → FusionNet.

    ``freeze_attention()`` starts stage 2: AttentionNet stops learning, stays in eval mode
    and runs under ``no_grad``. Boxes come from the maps as the FC sees them, HA_k · sign(a_k)
    in ranked order (``AttentionOutput.ranked``: the box rule normalises each map from its
    median to its peak, which makes a positive a_k irrelevant to the box; a negative one flips
    the map). Stage 1 trains
    ``model.attention_net`` on its own.

    With ``config.patch_placement="rank_median"`` (not the paper's; book/open_choices.md,
    choice 19) every face is cropped at ``placed_boxes`` ``(n, 4)``, each rank's median box over
    the training faces, which stage 2 sets once with `place_boxes` and the checkpoint keeps.
    """

    def __init__(self, config: ADPFConfig, box_method: str = "torch"):
        super().__init__()
        self.config, self.box_method = config, box_method
        self.attention_net = AttentionNet(config)
        self.fusion_net = FusionNet(config)
        self.boxes_placed = False
        if config.patch_placement == "rank_median":
            self.register_buffer("placed_boxes", torch.zeros(config.heads, 4, dtype=torch.int64))
            self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "boxes_placed", True))

    @property
    def attention_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.attention_net.parameters())

    def freeze_attention(self) -> "ADPF":
        self.attention_net.requires_grad_(False)
        self.attention_net.eval()
        return self

    def train(self, mode: bool = True) -> "ADPF":
        super().train(mode)
        if self.attention_frozen:
            self.attention_net.eval()
        return self

    def attend(self, x: Tensor) -> tuple[ModelOutput, Tensor]:
        """AttentionNet's output on x ``(B, 3, H, W)`` and the boxes ``(B, n, 4)`` P_1..P_n are
        cropped at: those of its ranked maps, or ``placed_boxes`` for every face."""
        att, boxes = self.face_boxes(x)
        if self.config.patch_placement == "rank_median":
            if not self.boxes_placed:
                raise RuntimeError("this ADPF crops at rank_median boxes but none are placed: call "
                                   "place_boxes after stage 1 (adpf.train does), or load a trained checkpoint")
            boxes = self.placed_boxes.expand(x.shape[0], -1, -1).clone()
        return att, boxes

    def face_boxes(self, x: Tensor) -> tuple[ModelOutput, Tensor]:
        """AttentionNet's output on x ``(B, 3, H, W)`` and the boxes ``(B, n, 4)`` of each face's
        own ranked maps (``patches.maps_to_boxes``)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.attention_frozen):
            att = self.attention_net(x)
        c = self.config
        boxes = maps_to_boxes(att.attention.ranked.detach(), c.image_size, c.patch_threshold, c.patch_min_frac,
                              c.patch_max_frac, method=self.box_method, baseline=c.patch_baseline)
        return att, boxes

    def place_boxes(self, boxes: Tensor) -> None:
        """Crop every face at each rank's median (``patches.rank_median_boxes``) of ``boxes``
        ``(N, n, 4)``, the `face_boxes` of the training faces (``patch_placement="rank_median"``)."""
        if self.config.patch_placement != "rank_median":
            raise ValueError(f"place_boxes needs patch_placement='rank_median', "
                             f"this ADPF's is {self.config.patch_placement!r}")
        self.placed_boxes.copy_(rank_median_boxes(boxes, self.config.image_size))
        self.boxes_placed = True

    def forward(self, x: Tensor, boxes: Tensor | None = None) -> ModelOutput:
        """x ``(B, 3, H, W)`` → ``ModelOutput``. ``boxes`` ``(B, n, 4)``: P_1..P_n's boxes found
        beforehand (stage 2 with ``recipe.fusion_boxes="once"``: ``adpf.patches.move_boxes``);
        AttentionNet is then not run and the output holds no attention. None finds them here."""
        att = None
        if boxes is None:
            att, boxes = self.attend(x)
        elif not self.attention_frozen:
            raise ValueError("boxes found beforehand need a frozen AttentionNet (stage 2)")
        patches = crop_patches(x, boxes, self.config.patch_size)
        fused = self.fusion_net(x, patches)
        return ModelOutput(logits=fused.logits, attention=None if att is None else att.attention,
                           attention_logits=None if att is None else att.logits, boxes=boxes, patches=patches)


class FixedPatchFusion(nn.Module):
    """The ``fixed_patches`` baseline: FusionNet fed with ``fixed_boxes`` (the same face parts in every image)."""

    def __init__(self, config: ADPFConfig):
        super().__init__()
        self.config = config
        self.fusion_net = FusionNet(config)
        self.register_buffer("boxes", fixed_boxes(config.heads, config.image_size), persistent=False)

    def forward(self, x: Tensor) -> ModelOutput:
        boxes = self.boxes.expand(x.shape[0], -1, -1)
        patches = crop_patches(x, boxes, self.config.patch_size)
        return ModelOutput(logits=self.fusion_net(x, patches).logits, boxes=boxes, patches=patches)


class BasicBlock(nn.Module):
    """ResNet's basic block: two conv 3×3 – BatchNorm, ReLU between, added to the input (a 1×1
    conv – BatchNorm shortcut where the shape changes), ReLU. ``(B, c_in, s, s)`` → ``(B, c_out, s/stride, s/stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ReferenceResNet(nn.Module):
    """The ``resnet18`` reference: ResNet-18 (He et al., 2016) with the same input, age output and loss.

    The layout of ResNet-18 for small images: a conv 3×3 stem, four stages of two basic blocks
    with widths w, 2w, 4w, 8w (each stage but the first halving the resolution), global average
    pooling, FC to the q age logits. ``config.reference_width`` = w is set per preset so that
    the network has about ADPF's parameter count (cpu: w = 11, 0.34 M against ADPF's 0.36 M;
    paper: w = 42, 4.8 M against 4.9 M); the stem is strided by image_size / 64 so that the
    first stage always works at 64×64. Not in the paper: a well-known design beside ADPF at an
    equal budget (book/open_choices.md, choice 14).

    forward(x ``(B, 3, H, W)``) → ``ModelOutput`` (logits ``(B, q)``).
    """

    def __init__(self, config: ADPFConfig):
        super().__init__()
        self.config, w = config, config.reference_width
        stride = max(1, config.image_size // 64)
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, w, 3, stride=stride, padding=1, bias=False),
                                  nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        stages, prev = [], w
        for i, width in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stages += [BasicBlock(prev, width, stride=1 if i == 0 else 2), BasicBlock(width, width)]
            prev = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(prev, config.num_classes)

    def forward(self, x: Tensor) -> ModelOutput:
        check_images(x, self.config)
        features = self.stages(self.stem(normalize_images(x)))
        return ModelOutput(logits=self.fc(features.mean(dim=(2, 3))))


def build_model(config: ADPFConfig) -> nn.Module:
    """The network for ``config.variant``; ablations are switches of the config, not other classes."""
    if config.variant == "adpf":
        return ADPF(config)
    if config.variant == "attention_only":
        return AttentionNet(config)
    if config.variant == "plain_cnn":
        return FusionNet(config, use_patches=False)
    if config.variant == "fixed_patches":
        return FixedPatchFusion(config)
    if config.variant == "resnet18":
        return ReferenceResNet(config)
    raise ValueError(f"unknown variant {config.variant!r}")


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameters (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_table(config: ADPFConfig) -> list[tuple[str, int, int, int]]:
    """(variant, AttentionNet, FusionNet, total) parameter counts for every variant of a config."""
    rows = []
    for variant in ("adpf", "attention_only", "plain_cnn", "fixed_patches", "resnet18"):
        model = build_model(config.replace(variant=variant))
        attention = count_parameters(model if variant == "attention_only" else getattr(model, "attention_net", None))
        total = count_parameters(model)
        rows.append((variant, attention, total - attention, total))
    return rows

