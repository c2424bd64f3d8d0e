"""Training: the paper's two-stage schedule for every variant, with train-or-load and exact resume.

Stages (paper, "Implementation details"):

``attention``  AttentionNet alone, trained with L_AttentionNet = L_AE + λ·L_div (Eq. 14).
``fusion``     AttentionNet frozen (eval mode, no gradient), FusionNet trained with L_AE (Eq. 13).
``single``     one stage with L_AE, for the baselines ``plain_cnn`` and ``fixed_patches``.

``adpf`` runs attention → fusion, ``attention_only`` stops after attention. ``train`` is the one
entry point: it trains any config on any prepared dataset and split and returns a JSON-ready
`TrainResult`. Each stage is stored under a key of everything that determines it
(``adpf.cache``), so a stage trained once is loaded afterwards, and ADPF's stage 1 is shared
with AttentionNet alone and with every variant whose AttentionNet is the same.

Reproducibility: every stage seeds python, numpy and torch from (seed, stage, rank) before it
builds its network, so a stage's result depends on its key alone, not on what ran before.
After every epoch the stage's checkpoint holds model, optimizer, scheduler, epoch, history and
the random states (torch, numpy, python and the DataLoader's generator): a run that is
interrupted and started again resumes from the last finished epoch and, on CPU with the same
settings, ends with exactly the weights of an uninterrupted run.

Divergence: a step whose loss is NaN or ±inf stops the stage with `NonFiniteTrainingError`
(naming stage, epoch and step) before that step's update, and an epoch whose weights or
BatchNorm statistics are not finite is never saved, so the checkpoint on disk is the last good
epoch's. A rerun with the same recipe resumes from it and diverges again: change the recipe.

Several processes: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the trained
network is wrapped in DistributedDataParallel and the training set is sharded by
DistributedSampler; ``batch_size`` stays the global batch (each of W processes takes
batch_size / W). Every process evaluates (same weights, same numbers); process 0 alone writes
files. Resuming is exact only for a single process (the other processes' random states are
not stored). With several machines the cache folder must be shared.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import adpf
from adpf.cache import (attention_config, code_version, data_identity, digest, read_json,
                        split_identity, stage_dir, write_json)
from adpf.checkpoint import (check_config, load_checkpoint, load_model_state, rng_state,
                             save_checkpoint, set_rng_state)
from adpf.config import ADPFConfig
from adpf.data.prepared import Prepared, PreparedFaces, load_prepared
from adpf.evaluate import predict, summarize
from adpf.losses import age_estimation_loss, attention_net_loss
from adpf.networks import build_model

StageName = Literal["attention", "fusion", "single"]


class NonFiniteTrainingError(ValueError):
    """Training went non-finite (a NaN/inf loss, or weights that are no longer finite); the message
    names the stage, epoch and step, and the last good checkpoint."""


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
    num_workers: DataLoader worker processes (workers draw their own augmentation seeds, so
        this is part of what determines a result).
    seed: seeds network initialisation, shuffling and augmentation.
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    amp: bf16 autocast on CUDA (no effect on CPU).
    channels_last: channels-last memory format on CUDA (no effect on CPU).
    compile: wrap the trained network in ``torch.compile``.
    deterministic: ``torch.use_deterministic_algorithms`` (warn-only, since some CUDA kernels
        have no deterministic version) and no cuDNN autotuning.
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
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.attention_epochs < 0 or self.fusion_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need batch_size >= 1 and lr > 0, got {self.batch_size}, {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
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
    "cpu": Recipe(attention_epochs=6, fusion_epochs=6, lr=0.02, schedule="cosine", clip_grad_norm=1.0),
    # The book: the same, shorter, so that every chapter's trainings together take minutes.
    "book": Recipe(attention_epochs=4, fusion_epochs=4, lr=0.02, schedule="cosine", clip_grad_norm=1.0),
    # One GPU, the paper preset: the paper's step schedule compressed 5× (40 + 40 epochs, ×0.1
    # every 10, so four phases as in the paper's 200 with ×0.1 every 50), batch 256 in bf16 with
    # channels-last memory. The lr is the measured cpu lr 0.02 at batch 32 scaled linearly with
    # the batch (×8 = 0.16), reached over a 2-epoch linear warm-up as large-batch SGD needs, with
    # the clipping the cpu measurement requires. At ≥ 5,000 images/s a stage on 7,000 training
    # faces then takes about a minute, on MORPH II's ≈ 44,000 about six. Not yet run on a GPU.
    "gpu": Recipe(attention_epochs=40, fusion_epochs=40, batch_size=256, lr=0.16, schedule="step", lr_step=10,
                  warmup_epochs=2, clip_grad_norm=1.0, amp=True, channels_last=True),
}


def get_recipe(name: str, **changes) -> Recipe:
    """A named recipe, optionally with some fields changed."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name].replace(**changes)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based) of a stage."""
    epoch = step // steps_per_epoch
    if recipe.schedule == "step":
        factor = recipe.lr_gamma ** (epoch // recipe.lr_step)
    else:
        factor = 0.5 * (1 + math.cos(math.pi * step / max(1, epochs * steps_per_epoch)))
    warmup = recipe.warmup_epochs * steps_per_epoch
    return factor * min(1.0, (step + 1) / warmup) if warmup else factor


# --- stages and keys -------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """One training stage: its name, the config of the network its checkpoint holds, its epochs, its key."""

    name: StageName
    config: ADPFConfig
    epochs: int
    key: str

    @property
    def folder(self) -> Path:
        return stage_dir(self.name, self.key)


def plan_stages(config: ADPFConfig, identity: dict, recipe: Recipe) -> list[Stage]:
    """The stages ``config`` trains through, each with its cache key.

    ``identity`` holds the data and split identities. A key covers the stage's config, the
    data, the split, the result-shaping recipe fields, the code version and, for stage 2,
    the key of the stage-1 model.
    """
    shaping = {k: v for k, v in recipe.to_dict().items()
               if k not in SPEED_FIELDS + ("attention_epochs", "fusion_epochs")}
    device = recipe.resolved_device().type
    shaping.update(device=device, amp=recipe.amp and device == "cuda")

    def key(name: str, cfg: ADPFConfig, epochs: int, after: str | None = None) -> str:
        return digest({"stage": name, "config": cfg.to_dict(), "epochs": epochs, "after": after,
                       "recipe": shaping, "code": code_version(), **identity})

    if config.variant in ("adpf", "attention_only"):
        att = attention_config(config)
        first = Stage("attention", att, recipe.attention_epochs, key("attention", att, recipe.attention_epochs))
        if config.variant == "attention_only":
            return [first]
        return [first, Stage("fusion", config, recipe.fusion_epochs,
                             key("fusion", config, recipe.fusion_epochs, first.key))]
    return [Stage("single", config, recipe.fusion_epochs, key("single", config, recipe.fusion_epochs))]


# --- the result record ------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a training produced (JSON-serialisable; ``TrainResult(**json.load(f))`` reads it back).

    metrics: ``test`` (``evaluate.summarize``: mae, cs, age_groups, mean_std, count) and
        ``val`` (the same on the validation set, when there is one).
    history: per stage, one dict per epoch (lr, loss parts, train_mae, val_mae, seconds,
        images_per_s).
    timings: seconds of each stage's training (as it was trained, also when loaded from cache).
    throughput: training images per second of each stage.
    """

    config: dict
    data: dict
    split: dict
    recipe: dict
    metrics: dict
    history: dict[str, list[dict]]
    timings: dict[str, float]
    throughput: dict[str, float]
    hardware: dict
    versions: dict
    checkpoint: str
    stage_keys: dict[str, str]
    cached: bool = False

    @property
    def mae(self) -> float:
        """Test MAE."""
        return self.metrics["test"]["mae"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def hardware() -> dict:
    """The machine a training ran on."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
    return info


def versions() -> dict:
    return {"adpf": adpf.__version__, "code": code_version(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


# --- distributed ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Process:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_process(recipe: Recipe) -> tuple[Process, bool]:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun) and join the process group.

    Returns the process and whether this call created the process group (NCCL on CUDA,
    gloo on CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = recipe.resolved_device()
    if world <= 1:
        return Process(device=device), False
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if recipe.batch_size % world:
        raise ValueError(f"batch_size={recipe.batch_size} must be divisible by WORLD_SIZE={world}")
    return Process(rank, world, device), created


# --- data -------------------------------------------------------------------------------------

def as_split(split, count: int) -> dict[str, np.ndarray]:
    """``split`` as ``{"train", "val", "test"}`` int64 index arrays (``val`` may be empty).

    Accepts a mapping or an object with ``train``, ``test`` and optionally ``val`` attributes
    (a protocol's split).
    """
    def get(name):
        return split.get(name) if isinstance(split, dict) else getattr(split, name, None)

    out = {}
    for name in ("train", "val", "test"):
        idx = get(name)
        if idx is None and name != "val":
            raise ValueError(f"split has no {name!r} indices")
        idx = np.asarray([] if idx is None else idx, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= count)):
            raise ValueError(f"split {name!r}: indices must be a 1-D array of rows in 0..{count - 1}")
        out[name] = idx
    for name in ("train", "test"):
        if not out[name].size:
            raise ValueError(f"split {name!r} is empty")
    return out


def make_loader(data: Prepared, indices: np.ndarray, recipe: Recipe, process: Process, train: bool,
                generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader over some rows: shuffled and augmented for training (sharded under DDP)."""
    dataset = PreparedFaces(data, indices, augment=train, pad=recipe.pad)
    per_process = recipe.batch_size // process.world_size
    sampler = None
    if train:
        sampler = (DistributedSampler(dataset, process.world_size, process.rank, shuffle=True,
                                      seed=recipe.seed, drop_last=True)
                   if process.distributed else RandomSampler(dataset, generator=generator))
    return DataLoader(dataset, batch_size=per_process if train else 2 * recipe.batch_size,
                      sampler=sampler, drop_last=train and len(dataset) > per_process,
                      num_workers=recipe.num_workers, generator=generator,
                      pin_memory=process.device.type == "cuda",
                      persistent_workers=recipe.num_workers > 0)


# --- training ---------------------------------------------------------------------------------

EpochCallback = Callable[[Stage, dict, nn.Module], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def stage_seed(recipe: Recipe, stage: Stage, process: Process) -> int:
    return int(digest([recipe.seed, stage.name, process.rank]), 16) % 2 ** 62


@contextlib.contextmanager
def determinism(recipe: Recipe):
    """``torch.use_deterministic_algorithms`` and cuDNN settings for the duration of a training."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.benchmark = not recipe.deterministic
    torch.backends.cudnn.deterministic = recipe.deterministic
    if recipe.deterministic:  # (the switch imports torch's compiler stack: touch it only when asked)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
        if recipe.deterministic:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def build_stage_model(stage: Stage, previous: nn.Module | None, process: Process) -> nn.Module:
    """The stage's network on the process's device; stage 2 starts from the stage-1 AttentionNet, frozen."""
    model = build_model(stage.config)
    if stage.name == "fusion":
        load_model_state(model.attention_net, previous.state_dict(), f"stage 1 of {stage.folder}")
        model.freeze_attention()
    return model.to(process.device)


def trained_parameters(stage: Stage, model: nn.Module) -> list[nn.Parameter]:
    module = model.fusion_net if stage.name == "fusion" else model
    return [p for p in module.parameters() if p.requires_grad]


def make_optimizer(recipe: Recipe, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``parameters``."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def stage_loss(stage: Stage, output, age: torch.Tensor):
    """Eq. 14 for the attention stage, Eq. 13 (L_AE) otherwise."""
    if stage.name == "attention":
        return attention_net_loss(output.logits.float(), age, output.attention.maps.float(), stage.config)
    return age_estimation_loss(output.logits.float(), age, stage.config)


def check_finite_step(stage: Stage, values: dict[str, float], epoch: int, step: int, steps: int,
                      checkpoint_path: Path, process: Process) -> None:
    """Raise `NonFiniteTrainingError` when this step's loss is NaN or ±inf on any process.

    ``values`` are the loss parts already read as floats; under DDP the verdict is shared by an
    all-reduce so that every process stops at the same step.
    """
    bad = not all(math.isfinite(v) for v in values.values())
    if process.distributed:
        flag = torch.tensor(float(bad), device=process.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = bool(flag.item())
    if bad:
        parts = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "total")
        raise NonFiniteTrainingError(
            f"stage {stage.name} ({stage.config.variant}) went non-finite in epoch {epoch + 1}/{stage.epochs}, "
            f"step {step + 1}/{steps}: loss {values.get('total', float('nan')):.4g} ({parts}); stopped before "
            f"this step's update. {last_good(checkpoint_path, epoch)} Lower the learning rate, "
            "add a warm-up or clip the gradients (Recipe.lr, warmup_epochs, clip_grad_norm).")


def check_finite_state(stage: Stage, model: nn.Module, epoch: int, checkpoint_path: Path) -> None:
    """Raise `NonFiniteTrainingError` when a weight or buffer of ``model`` is NaN or ±inf (before saving it)."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteTrainingError(
            f"stage {stage.name} ({stage.config.variant}) went non-finite in epoch {epoch + 1}/{stage.epochs}: "
            f"{len(bad)} tensors of the model are not finite (first: {bad[0]}); this epoch was not saved. "
            f"{last_good(checkpoint_path, epoch)}")


def last_good(checkpoint_path: Path, epoch: int) -> str:
    """Where the last good epoch is kept (``epoch`` epochs finished)."""
    if epoch == 0:
        return "No epoch had finished, so there is no checkpoint."
    return f"The last good checkpoint is {checkpoint_path} (epoch {epoch})."


def run_stage(stage: Stage, previous: nn.Module | None, data: Prepared, split: dict[str, np.ndarray],
              recipe: Recipe, process: Process, use_cache: bool = True, progress: bool = True,
              callback: EpochCallback | None = None) -> tuple[nn.Module, dict]:
    """Train one stage, or load it when it is already in the cache; resume an interrupted one.

    Returns the trained network and the stage record (history, seconds, images_per_s).
    """
    checkpoint_path = stage.folder / "checkpoint.pt"
    seed_everything(stage_seed(recipe, stage, process))
    model = build_stage_model(stage, previous, process)
    done = read_json(stage.folder / "stage.json") if use_cache else None
    if done is not None:
        state = load_checkpoint(checkpoint_path, map_location=process.device)
        check_config(state, stage.config, checkpoint_path)
        load_model_state(model, state["model"], checkpoint_path)
        return model, done

    generator = torch.Generator().manual_seed(stage_seed(recipe, stage, process))
    loader = make_loader(data, split["train"], recipe, process, train=True, generator=generator)
    val_loader = make_loader(data, split["val"], recipe, process, train=False) if split["val"].size else None
    optimizer = make_optimizer(recipe, trained_parameters(stage, model))
    steps = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe, step, steps, stage.epochs))
    history, start = [], 0
    if use_cache and checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path, map_location=process.device)
        check_config(state, stage.config, checkpoint_path)
        load_model_state(model, state["model"], checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], generator)
        history, start = list(state["meta"]["history"]), int(state["epoch"])

    cuda = process.device.type == "cuda"
    if cuda and recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = DistributedDataParallel(model, device_ids=[process.device] if cuda else None) \
        if process.distributed else model
    forward = torch.compile(net) if recipe.compile else net
    bar = _progress_bar(stage, steps, start, progress and process.main)
    for epoch in range(start, stage.epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        model.train()
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        sums, seen, tic = {}, 0, time.perf_counter()
        for step, batch in enumerate(loader):
            images = batch["image"].to(process.device, non_blocking=True)
            if cuda and recipe.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            age = batch["age"].to(process.device, non_blocking=True)
            with torch.autocast(process.device.type, dtype=torch.bfloat16, enabled=cuda and recipe.amp):
                output = forward(images)
            losses = stage_loss(stage, output, age)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            values = {f.name: value.item() for f in dataclasses.fields(losses)
                      if (value := getattr(losses, f.name)) is not None}
            check_finite_step(stage, values, epoch, step, steps, checkpoint_path, process)
            if recipe.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], recipe.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            n = len(images)
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value * n
            seen += n
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{values['total']:.3f}", mae=f"{values['mae']:.2f}")
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tic
        if process.distributed:  # BatchNorm statistics: every process keeps process 0's
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        row.update({f"loss_{k}" if k != "total" else "loss": v / max(seen, 1) for k, v in sums.items()})
        row["train_mae"] = row.pop("loss_mae", float("nan"))
        row.update(seconds=seconds, images_per_s=seen * process.world_size / seconds)
        check_finite_state(stage, model, epoch, checkpoint_path)
        if val_loader is not None:
            row["val_mae"] = summarize(predict(model, val_loader, amp=recipe.amp))["mae"]
            bar.set_postfix(epoch=epoch + 1, loss=f"{row['loss']:.3f}", mae=f"{row['train_mae']:.2f}",
                            val=f"{row['val_mae']:.2f}")
        history.append(row)
        if process.main:
            save_checkpoint({"config": stage.config.to_dict(), "model": model.state_dict(), "stage": stage.name,
                             "epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": rng_state(generator),
                             "meta": {"history": history, "key": stage.key}}, checkpoint_path)
        if callback is not None:
            callback(stage, row, model)
    bar.close()
    if stage.epochs == 0 and process.main:
        save_checkpoint({"config": stage.config.to_dict(), "model": model.state_dict(), "stage": stage.name,
                         "epoch": 0, "meta": {"history": [], "key": stage.key}}, checkpoint_path)
    record = stage_record(history)
    if process.main:
        write_json(stage.folder / "stage.json", record)
    process.barrier()
    return model, record


def stage_record(history: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in history)
    images = sum(r["images_per_s"] * r["seconds"] for r in history)
    return {"history": history, "seconds": seconds, "images_per_s": images / seconds if seconds else 0.0}


def _progress_bar(stage: Stage, steps: int, start: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=steps * stage.epochs, initial=steps * start, desc=f"{stage.name} ({stage.config.variant})",
                disable=not enabled, leave=False, dynamic_ncols=True)


def train(config: ADPFConfig, data: str | os.PathLike | Prepared, split, recipe: Recipe | str = "cpu", *,
          use_cache: bool = True, progress: bool = True, callback: EpochCallback | None = None) -> TrainResult:
    """Train ``config`` (any variant) on a prepared dataset and split; or load it from the cache.

    Args:
        config: what to train (``config.variant`` picks the stages).
        data: a prepared folder (``adpf.data.prepared``) or the loaded `Prepared`.
        split: ``{"train", "val", "test"}`` row indices (or an object with those attributes);
            ``val`` may be missing or empty.
        recipe: a `Recipe` or the name of one in `RECIPES`.
        use_cache: load finished stages and resume interrupted ones from the cache folder
            (``adpf.cache``); False trains every stage afresh (and overwrites the cache).
        progress: show tqdm bars (loss and MAE) on process 0.
        callback: called as ``callback(stage, row, model)`` after every epoch with the history row
            and the network being trained.
    Returns:
        the `TrainResult` (``checkpoint`` is the last stage's checkpoint file).
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    data = data if isinstance(data, Prepared) else load_prepared(data)
    if data.image_size != config.image_size:
        raise ValueError(f"{data.root}: images are {data.image_size}×{data.image_size}, "
                         f"config.image_size is {config.image_size}")
    split = as_split(split, len(data))
    identity = {"data": data_identity(data), "split": split_identity(split)}
    stages = plan_stages(config, identity, recipe)
    result_path = stages[-1].folder / "result.json"
    if use_cache and (saved := read_json(result_path)) is not None:
        return TrainResult(**{**saved, "cached": True})

    process, created = setup_process(recipe)
    try:
        with determinism(recipe):
            model, records = None, {}
            for stage in stages:
                model, records[stage.name] = run_stage(stage, model, data, split, recipe, process,
                                                       use_cache, progress, callback)
            metrics = {}
            for name in ("test", "val"):
                if split[name].size:
                    loader = make_loader(data, split[name], recipe, process, train=False)
                    metrics[name] = summarize(predict(model, loader, amp=recipe.amp))
        result = TrainResult(
            config=config.to_dict(), data={"root": str(data.root), **identity["data"]},
            split=identity["split"], recipe=recipe.to_dict(), metrics=metrics,
            history={k: r["history"] for k, r in records.items()},
            timings={k: r["seconds"] for k, r in records.items()},
            throughput={k: r["images_per_s"] for k, r in records.items()},
            hardware={**hardware(), "device": str(process.device), "world_size": process.world_size},
            versions=versions(), checkpoint=str(stages[-1].folder / "checkpoint.pt"),
            stage_keys={s.name: s.key for s in stages})
        if process.main:
            write_json(result_path, result.to_dict())
        process.barrier()
        return result
    finally:
        if created:
            dist.destroy_process_group()
