"""The training recipe: how to train (optimiser, schedule, augmentation, hardware switches), and the named recipes.

A `Recipe` holds values only; the code that reads them (the learning-rate schedule
``adpf.train.lr_factor``, the optimiser, the loop) lives in ``adpf.train``. Every field that
changes what is learned is part of each stage's cache key (``adpf.train.plan_stages``: every
field but `SPEED_FIELDS`, whose device is kept as its type) and of every record
(``TrainResult.recipe``, the experiments' ``recipe``), so this file is not one of the hashed
``adpf.cache.SHAPING_FILES``: a changed value changes the key by itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from adpf.data.prepared import check_augmentation


@dataclass(frozen=True)
class Recipe:
    """How to train (optimiser, schedule, augmentation, hardware switches).

    attention_epochs: epochs of stage 1 (AttentionNet; paper: 200).
    fusion_epochs: epochs of stage 2 (FusionNet; paper: 200) and of the one-stage baselines
        ``plain_cnn`` and ``fixed_patches`` (so every FusionNet gets the same budget).
    batch_size: images per optimiser step, over all processes (paper: 32).
    optimizer: "sgd" (the paper's: SGD with ``momentum``) or "adamw" (AdamW, the weight decay
        decoupled). Every named recipe keeps the paper's SGD; AdamW is the alternative.
    lr: initial learning rate (paper: 0.1, with SGD).
    schedule: "step" multiplies the rate by ``lr_gamma`` every ``lr_step`` epochs (paper:
        ×0.1 every 50 epochs); "cosine" decays it to zero over the stage along a half cosine.
    warmup_epochs: a linear ramp from lr/steps to lr over this many epochs (0: none).
    momentum, weight_decay: of SGD; the paper gives neither (book/open_choices.md,
        choice 9): 0.9 and 5e-4, the usual values for SGD on CNNs of this size. Weight decay
        applies to every parameter.
    clip_grad_norm: clip the global gradient norm of the trained parameters to this value
        before each step (None: no clipping, as in the paper). L_MAE (Eq. 11) is in years, so
        its gradients are large (AttentionNet's: norm ≈ 9 at initialisation) and do not shrink
        as the error does; without clipping, SGD on the cpu preset diverged at lr 0.1 and
        collapsed to one age for every face at lr 0.02 (measured in the comment of `RECIPES`).
    pad: zero padding of the pad-crop-flip augmentation in pixels (book/open_choices.md,
        choice 9); None is the dataset's default, image_size / 16 (8 px at 128).
    crop_scale: the smallest side of the augmentation's window as a fraction of the face's side
        (``adpf.data.prepared.draw_offsets``): each training face is cut from its padded image
        by a square window of side uniform in crop_scale..1 of the face, resized back (and its
        boxes with it). 1 (every named recipe): the paper's window of the face's own size.
        Not the paper's (book/open_choices.md, choice 21).
    colour_jitter: brightness, contrast and saturation each scaled by a factor uniform in
        1 ± colour_jitter (``adpf.data.prepared.jitter_colours``); 0: no colour change, as
        in the paper and every named recipe (choice 21).
    grayscale: the probability that a training face is turned gray (0: never; choice 21).
    num_workers: DataLoader worker processes (workers draw their own augmentation seeds, so
        this is part of what determines a result). Unused when the data is on the device.
    data_on_device: hold the training and validation faces on the device as uint8 and augment
        each batch there (``adpf.data.prepared.DeviceBatches``: no DataLoader, no workers);
        None (auto): on CUDA with one process. The augmentation draws the same distribution
        either way, but not the same numbers, so this is part of what determines a result.
    seed: seeds network initialisation, shuffling and augmentation.
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    amp: bf16 autocast on CUDA (no effect on CPU).
    channels_last: channels-last memory format on CUDA (no effect on CPU).
    compile: wrap the trained network in ``torch.compile``.
    deterministic: ``torch.use_deterministic_algorithms`` (warn-only, since some CUDA kernels
        have no deterministic version) and no cuDNN autotuning.
    keep_best: end each stage with the weights of its epoch of lowest validation MAE (kept as
        ``best.pt`` in the stage folder while training; the stage's checkpoint and the record say
        which epoch: ``TrainResult.best_epochs``). False keeps the last epoch (the paper's).
    fusion_boxes: when ADPF's stage 2 finds the patch boxes of its training faces. "every_step"
        (the paper's pipeline, as at test time): the frozen AttentionNet runs on every augmented
        face of every step. "once": it runs once on every training face as stored, before the
        first epoch, and each step moves those boxes as the augmentation moved the face
        (``adpf.patches.move_boxes``), which skips AttentionNet and the box rule in the steps
        (book/open_choices.md, choice 17). Validation and test faces get theirs from their maps
        either way.
    box_jitter: stage 2 with ``fusion_boxes="once"`` moves every training box, at every step,
        by a random whole number of pixels up to this fraction of its side in x and in y
        (``adpf.patches.jitter_boxes``), so a face's patches differ from epoch to epoch. 0 (every
        named recipe): the boxes move only with the face, as in the paper. Not the paper's
        (book/open_choices.md, choice 22).
    qk_init: how stage 1 starts the query and key convolutions of every attention head
        (book/open_choices.md, choice 18). "pytorch": PyTorch's default for a convolution, as
        every record up to 6 Dec 2026 was trained; its logits start with a spread of about 0.2,
        so every head's softmax starts within 1 % of uniform. "unit_logits": weights from
        N(0, 2 / c_in) and zero biases (He's rule for ReLU inputs), so the logits start with a
        spread near 1 (``adpf.attention.RelativeSelfAttention.init_query_key``).
    """

    attention_epochs: int = 200
    fusion_epochs: int = 200
    batch_size: int = 32
    lr: float = 0.1
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["step", "cosine"] = "step"
    lr_step: int = 50
    lr_gamma: float = 0.1
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clip_grad_norm: float | None = None
    pad: int | None = None
    crop_scale: float = 1.0
    colour_jitter: float = 0.0
    grayscale: float = 0.0
    num_workers: int = 0
    data_on_device: bool | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    keep_best: bool = False
    fusion_boxes: Literal["every_step", "once"] = "every_step"
    box_jitter: float = 0.0
    qk_init: Literal["pytorch", "unit_logits"] = "pytorch"

    def __post_init__(self) -> None:
        if self.attention_epochs < 0 or self.fusion_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need batch_size >= 1 and lr > 0, got {self.batch_size}, {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if self.fusion_boxes not in ("every_step", "once"):
            raise ValueError(f"fusion_boxes must be 'every_step' or 'once', got {self.fusion_boxes!r}")
        if self.qk_init not in ("pytorch", "unit_logits"):
            raise ValueError(f"qk_init must be 'pytorch' or 'unit_logits', got {self.qk_init!r}")
        if not 0 <= self.box_jitter <= 0.5:
            raise ValueError(f"box_jitter must be in [0, 0.5] (a fraction of the box's side), got {self.box_jitter}")
        if self.box_jitter and self.fusion_boxes != "once":
            raise ValueError("box_jitter moves the boxes found once before stage 2: it needs fusion_boxes='once', "
                             f"got {self.fusion_boxes!r}")
        check_augmentation(self.crop_scale, self.colour_jitter, self.grayscale)
        if self.schedule == "step" and self.lr_step < 1:
            raise ValueError(f"lr_step must be >= 1, got {self.lr_step}")

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


#: Recipe fields that change speed but not what is learned (left out of cache keys).
SPEED_FIELDS = ("channels_last", "compile", "deterministic", "device")

RECIPES: dict[str, Recipe] = {
    # The paper's recipe (SGD, batch 32, lr 0.1 ×0.1 every 50 epochs, 200 + 200 epochs).
    "paper": Recipe(),
    # The cpu preset on ~10k 64×64 faces on a few cores. Measured (benchmarks/recipe_collapse.py,
    # AttentionNet alone on 2,100 drawn faces, 4 epochs, seed 0, exact KL): SGD at lr 0.1 without
    # clipping diverges to NaN within 8 steps, with or without a one-epoch warm-up; lr 0.1 clipped
    # at norm 1 and lr 0.02 unclipped both collapse to one age for every face (spread of the
    # predicted ages 0.2 and 0.1 years, validation MAE 18.4, the mean-age plateau); lr 0.02 with
    # cosine decay and clipping at norm 1 learns: validation MAE 14.9, 9.7, 7.5, 6.6 without a
    # warm-up, 18.2, 13.0, 11.4, 7.8 with one, so the warm-up is left out.
    #
    # Re-derived from training and validation curves (benchmarks/results/recipes-2026-12-04.md):
    # at 6 epochs every model still underfit on real faces (the training MAE equal to the
    # validation MAE and both falling), so the epochs grow to what one CPU core does in about 40
    # minutes for ADPF on UTKFace's 6,783 training faces (15 + 15), and each stage keeps its
    # best validation epoch. On UTKFace, plain CNN, 10 epochs, seed 0 (validation / test MAE):
    # this SGD 9.07 / 8.77; AdamW lr 1e-3, decay 0.05, no clipping 9.93 / 9.25; AdamW 3e-3 with
    # a warm-up 10.14 / 9.29; L_MAE weighted 0.1 9.94 / 9.41 (SGD) and 8.88 / 8.36 (AdamW);
    # FusionNet's widths doubled 8.75 / 8.09. SGD clipped at norm 1 stays.
    "cpu": Recipe(attention_epochs=15, fusion_epochs=15, lr=0.02, schedule="cosine", clip_grad_norm=1.0,
                  keep_best=True),
    # The book: the same on 2,100 drawn training faces, as long as the book's 15 minutes allow.
    # AttentionNet at 4 epochs ended at a validation MAE of 9.2 (still falling fast); at 8, 3.9.
    "book": Recipe(attention_epochs=10, fusion_epochs=8, lr=0.02, schedule="cosine", clip_grad_norm=1.0,
                   keep_best=True),
    # One GPU, the paper preset: the paper's step schedule compressed 5× (40 + 40 epochs, ×0.1
    # every 10, so four phases as in the paper's 200 with ×0.1 every 50), batch 256 in bf16 with
    # channels-last memory. The lr is the measured cpu lr 0.02 at batch 32 scaled linearly with
    # the batch (×8 = 0.16), reached over a 2-epoch linear warm-up as large-batch SGD needs, with
    # the clipping the cpu measurement requires. At ≥ 5,000 images/s a stage on 7,000 training
    # faces then takes about a minute, on MORPH II's ≈ 44,000 about six. Run on one H200
    # (benchmarks/results/gpu-2026-12-04-h200/, commit 152e05b): the bare steps 7,260 / 7,559
    # images/s, adpf.train with this recipe 2,011 / 1,682 (the DataLoader in the training process,
    # num_workers=0, and 4 / 3 host syncs a step), test MAE 2.88 on 10,000 drawn faces in 14 + 14
    # epochs; on 4,200 UTKFace faces 10.07 (underfitting). The data now stays on the device there.
    "gpu": Recipe(attention_epochs=40, fusion_epochs=40, batch_size=256, lr=0.16, schedule="step", lr_step=10,
                  warmup_epochs=2, clip_grad_norm=1.0, amp=True, channels_last=True, keep_best=True),
}


def get_recipe(name: str, **changes) -> Recipe:
    """A named recipe, optionally with some fields changed."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name].replace(**changes)
