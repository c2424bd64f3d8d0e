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

The recipe (how to train) is ``adpf.recipes``; the processes under ``torchrun`` are
``adpf.distributed``. A stage is `run_stage`: load or resume it, then `train_one_epoch` and
`validate` for every epoch, with a checkpoint after each.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import adpf
from adpf.attention import RelativeSelfAttention
from adpf.cache import (attention_config, code_version, data_identity, digest, read_json,
                        split_identity, stage_dir, write_json)
from adpf.checkpoint import (check_config, checkpoint_dict, load_checkpoint, load_model_state, rng_state,
                             save_checkpoint, set_rng_state)
from adpf.config import ADPFConfig
from adpf.data.prepared import DeviceBatches, Prepared, PreparedFaces, load_prepared
from adpf.distributed import Process, close_process, setup_process
from adpf.evaluate import fit_std_scale, predict, summarize
from adpf.losses import age_estimation_loss, attention_net_loss
from adpf.networks import ADPF, build_model
from adpf.patches import jitter_boxes, move_boxes
from adpf.recipes import SPEED_FIELDS, Recipe, get_recipe

StageName = Literal["attention", "fusion", "single"]


class NonFiniteTrainingError(ValueError):
    """Training went non-finite (a NaN/inf loss, or weights that are no longer finite); the message
    names the stage, epoch and step, and the last good checkpoint."""


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


#: Recipe fields that shape one stage only, and that stage: the others share their keys across
#: the field's values (stage 2 still follows a changed stage 1 through its key's ``after``).
ONE_STAGE_FIELDS = {"fusion_boxes": "fusion", "box_jitter": "fusion", "qk_init": "attention"}


def plan_stages(config: ADPFConfig, identity: dict, recipe: Recipe) -> list[Stage]:
    """The stages ``config`` trains through, each with its cache key.

    ``identity`` holds the data and split identities. A key covers the stage's config, the
    data, the split, the result-shaping recipe fields, the code version and, for stage 2,
    the key of the stage-1 model.
    """
    shaping = {k: v for k, v in recipe.to_dict().items()
               if k not in SPEED_FIELDS + ("attention_epochs", "fusion_epochs") + tuple(ONE_STAGE_FIELDS)}
    device = recipe.resolved_device().type
    shaping.update(device=device, amp=recipe.amp and device == "cuda")

    def key(name: str, cfg: ADPFConfig, epochs: int, after: str | None = None) -> str:
        own = {field: getattr(recipe, field) for field, stage in ONE_STAGE_FIELDS.items() if stage == name}
        return digest({"stage": name, "config": cfg.to_dict(), "epochs": epochs, "after": after,
                       "recipe": {**shaping, **own}, "code": code_version(), **identity})

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
    std_scale: the calibration of the ± fitted on the validation faces (``config.std_scale`` of
        the checkpoint; 1.0 without validation faces).
    best_epochs: per stage, the epoch whose weights were kept (the lowest validation MAE, with
        ``Recipe.keep_best``; None: the last epoch's).
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
    best_epochs: dict[str, int | None] = dataclasses.field(default_factory=dict)
    std_scale: float = 1.0

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


def data_on_device(recipe: Recipe, process: Process) -> bool:
    """Whether the training reads its faces from the device (`DeviceBatches`) rather than a DataLoader:
    ``recipe.data_on_device``, or where that is None (auto), on CUDA with one process."""
    if recipe.data_on_device is None:
        return process.device.type == "cuda" and not process.distributed
    if recipe.data_on_device and process.distributed:
        raise ValueError("data_on_device=True needs one process (under torchrun the DataLoader shards the data)")
    return recipe.data_on_device


def make_loader(data: Prepared, indices: np.ndarray, recipe: Recipe, process: Process, train: bool,
                generator: torch.Generator | None = None) -> DataLoader | DeviceBatches:
    """Batches of some rows: shuffled and augmented for training (sharded under DDP).

    A DataLoader over `PreparedFaces`, or, where `data_on_device`, `DeviceBatches` (the rows
    held on the device, each batch gathered and augmented there); both yield ``image``
    ``(B, 3, H, W)`` float32, ``age`` ``(B,)``, ``index`` ``(B,)``. Training batches hold
    ``batch_size`` faces (per process), evaluation batches twice as many.
    """
    per_process = recipe.batch_size // process.world_size
    augmentation = {k: getattr(recipe, k) for k in ("crop_scale", "colour_jitter", "grayscale")}
    if data_on_device(recipe, process):
        return DeviceBatches(data, indices, per_process if train else 2 * recipe.batch_size, process.device,
                             train, pad=recipe.pad, generator=generator, **augmentation)
    dataset = PreparedFaces(data, indices, augment=train, pad=recipe.pad, **augmentation)
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


def build_stage_model(stage: Stage, previous: nn.Module | None, process: Process, recipe: Recipe) -> nn.Module:
    """The stage's network on the process's device; stage 2 starts from the stage-1 AttentionNet,
    frozen. Stage 1's queries and keys start as ``recipe.qk_init`` says."""
    model = build_model(stage.config)
    if stage.name == "attention" and recipe.qk_init == "unit_logits":
        for module in model.modules():
            if isinstance(module, RelativeSelfAttention):
                module.init_query_key(gain=math.sqrt(2))
    if stage.name == "fusion":
        load_model_state(model.attention_net, previous.state_dict(), f"stage 1 of {stage.folder}")
        model.freeze_attention()
    return model.to(process.device)


def trained_parameters(stage: Stage, model: nn.Module) -> list[nn.Parameter]:
    module = model.fusion_net if stage.name == "fusion" else model
    return [p for p in module.parameters() if p.requires_grad]


def make_optimizer(recipe: Recipe, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``parameters``, fused: one kernel a step, and a step that
    `skip_update_if` marks is skipped on the device (how a non-finite step is kept out without a sync)."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
    return torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           fused=True)


def make_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                   epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's learning-rate schedule (`lr_factor`), stepped after every optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch, epochs))


@dataclass
class StoredBoxes:
    """ADPF's patch boxes for its training faces, found once before stage 2 (``recipe.fusion_boxes
    = "once"``, book/open_choices.md, choice 17) by `find_stored_boxes`.

    boxes: ``(rows, n, 4)`` int64 on the device, row i the boxes of the data's face i as stored
        (rows outside the training split stay zero); pad, image_size: the augmentation's;
        jitter, seed: ``recipe.box_jitter`` and the seed of its draws.
    """

    boxes: torch.Tensor
    pad: int
    image_size: int
    jitter: float = 0.0
    seed: int = 0

    def moved(self, batch: dict, epoch: int = 0, step: int = 0) -> torch.Tensor:
        """The boxes ``(B, n, 4)`` of an augmented training batch (its ``index`` and ``offsets``),
        jittered (`jitter_boxes`) by a draw of its own for each (seed, epoch, step)."""
        rows = batch["index"].to(self.boxes.device)
        boxes = move_boxes(self.boxes[rows], batch["offsets"], self.pad, self.image_size)
        if not self.jitter:
            return boxes
        generator = torch.Generator(device=boxes.device).manual_seed(int(digest([self.seed, epoch, step]), 16) % 2 ** 62)
        return jitter_boxes(boxes, self.jitter, self.image_size, generator)


def find_stored_boxes(model: ADPF, data: Prepared, indices: np.ndarray, recipe: Recipe,
                      process: Process, seed: int = 0) -> StoredBoxes:
    """The boxes ADPF crops at (`ADPF.attend`) for the faces ``indices`` as stored (``seed``: of
    their jitter)."""
    pad = data.image_size // 16 if recipe.pad is None else recipe.pad
    return StoredBoxes(boxes_of_faces(model.attend, model, data, indices, recipe, process), pad, data.image_size,
                       recipe.box_jitter, seed)


def boxes_of_faces(find: Callable, model: ADPF, data: Prepared, indices: np.ndarray, recipe: Recipe,
                   process: Process) -> torch.Tensor:
    """``find``'s boxes (`ADPF.attend` or `ADPF.face_boxes`) ``(rows, n, 4)`` for the faces
    ``indices`` as stored (other rows zero), in evaluation batches, under the autocast the
    training steps use."""
    model.eval()
    boxes = torch.zeros(len(data), model.config.heads, 4, dtype=torch.int64, device=process.device)
    amp = process.device.type == "cuda" and recipe.amp
    with torch.no_grad(), torch.autocast(process.device.type, dtype=torch.bfloat16, enabled=amp):
        for batch in make_loader(data, indices, recipe, process, train=False):
            images, _ = training_batch(batch, recipe, process)
            boxes[batch["index"].to(process.device)] = find(images)[1]
    return boxes


def stage_loss(stage: Stage, output, age: torch.Tensor):
    """Eq. 14 for the attention stage, Eq. 13 (L_AE) otherwise."""
    if stage.name == "attention":
        return attention_net_loss(output.logits.float(), age, output.attention.maps.float(), stage.config)
    return age_estimation_loss(output.logits.float(), age, stage.config)


class EpochTally:
    """An epoch's loss parts summed over its images, and its first non-finite step, kept on the
    device so that a training step never waits for the host; `read` fetches them once.

    `add` takes a step's loss parts (0-dim tensors) and returns ``skip``, a 0-dim bool on the
    device: true from the first step whose loss parts are not all finite on, for the rest of the
    epoch (`skip_update_if` turns it into skipped optimiser steps, so the weights stay those from
    before that step's update).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] = []
        self.sums = self.bad_parts = None  # (k,) float32: the parts times the images, the first bad step's
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.seen = 0

    def add(self, step: int, losses, n: int) -> torch.Tensor:
        """Count step ``step`` (0-based) of ``n`` images; returns ``skip`` (0-dim bool, on the device)."""
        parts = {f.name: v for f in dataclasses.fields(losses) if (v := getattr(losses, f.name)) is not None}
        values = torch.stack([v.detach().float().reshape(()) for v in parts.values()])  # (k,)
        if self.sums is None:
            self.names = list(parts)
            self.sums, self.bad_parts = torch.zeros_like(values), torch.zeros_like(values)
        newly_bad = ~torch.isfinite(values).all() & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        self.bad_parts = torch.where(newly_bad, values, self.bad_parts)
        skip = self.first_bad >= 0
        self.sums += torch.where(skip, 0.0, values * n)
        self.seen += n
        return skip

    def read(self) -> tuple[dict[str, float], int | None, dict[str, float]]:
        """One host read: the parts averaged over the images, the first non-finite step (0-based;
        None when every step was finite) and that step's parts."""
        if self.sums is None:
            return {}, None, {}
        flat = torch.cat([self.sums / max(self.seen, 1), self.bad_parts, self.first_bad[None].float()]).tolist()
        k = len(self.names)
        bad = int(flat[-1])
        return (dict(zip(self.names, flat[:k])), None if bad < 0 else bad, dict(zip(self.names, flat[k:2 * k])))


def skip_update_if(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """Make ``optimizer``'s next step a no-op where ``skip`` (0-dim bool on the device) is true:
    weights, momenta and step counts untouched, decided on the device (the fused optimisers'
    ``found_inf``, which `make_optimizer`'s are)."""
    optimizer.grad_scale, optimizer.found_inf = None, skip.float()


def check_finite_step(stage: Stage, bad_step: int | None, values: dict[str, float], epoch: int, steps: int,
                      checkpoint_path: Path, process: Process) -> None:
    """Raise `NonFiniteTrainingError` when a step of this epoch had a NaN or ±inf loss on any process.

    ``bad_step`` (0-based, None: none) and its loss parts ``values`` are `EpochTally.read`'s,
    read once at the epoch's end; that step and every later one of the epoch were skipped
    (`skip_update_if`). Under DDP the verdict is shared by an all-reduce so that every process stops.
    """
    if process.anywhere(bad_step is not None):
        parts = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "total")
        where = f"step {bad_step + 1}/{steps}" if bad_step is not None else "on another process"
        raise NonFiniteTrainingError(
            f"stage {stage.name} ({stage.config.variant}) went non-finite in epoch {epoch + 1}/{stage.epochs}, "
            f"{where}: loss {values.get('total', float('nan')):.4g} ({parts}); stopped before "
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
    model = build_stage_model(stage, previous, process, recipe)
    done = read_json(stage.folder / "stage.json") if use_cache else None
    if done is not None:
        load_stage_checkpoint(checkpoint_path, stage, model, process)
        return model, done
    if stage.name == "fusion" and stage.config.patch_placement == "rank_median":  # before a resumed checkpoint
        rows = torch.as_tensor(split["train"], device=process.device)
        model.place_boxes(boxes_of_faces(model.face_boxes, model, data, split["train"], recipe, process)[rows])

    generator = torch.Generator().manual_seed(stage_seed(recipe, stage, process))
    loader = make_loader(data, split["train"], recipe, process, train=True, generator=generator)
    val_loader = make_loader(data, split["val"], recipe, process, train=False) if split["val"].size else None
    optimizer = make_optimizer(recipe, trained_parameters(stage, model))
    scheduler = make_scheduler(recipe, optimizer, len(loader), stage.epochs)
    history, start = [], 0
    if use_cache and checkpoint_path.is_file():
        state = load_stage_checkpoint(checkpoint_path, stage, model, process)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], generator)
        history, start = list(state["meta"]["history"]), int(state["epoch"])

    stored = None
    if stage.name == "fusion" and recipe.fusion_boxes == "once":
        stored = find_stored_boxes(model, data, split["train"], recipe, process, stage_seed(recipe, stage, process))
    forward = training_forward(model, recipe, process)
    bar = _progress_bar(stage, len(loader), start, progress and process.main)
    best_path = stage.folder / "best.pt"
    for epoch in range(start, stage.epochs):
        row = train_one_epoch(stage, epoch, model, forward, loader, optimizer, scheduler, recipe, process,
                              checkpoint_path, bar, stored)
        check_finite_state(stage, model, epoch, checkpoint_path)
        if val_loader is not None:
            row["val_mae"] = validate(model, val_loader, recipe)["mae"]
            bar.set_postfix(epoch=epoch + 1, loss=f"{row['loss']:.3f}", mae=f"{row['train_mae']:.2f}",
                            val=f"{row['val_mae']:.2f}")
        history.append(row)
        if process.main:
            if recipe.keep_best and best_epoch(history) == epoch + 1:
                save_checkpoint(checkpoint_dict(stage.config, model.state_dict(), stage.name, epoch + 1,
                                                meta={"key": stage.key}), best_path)
            save_checkpoint(checkpoint_dict(stage.config, model.state_dict(), stage.name, epoch + 1,
                                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                            rng=rng_state(generator), meta={"history": history, "key": stage.key}),
                            checkpoint_path)
        if callback is not None:
            callback(stage, row, model)
    bar.close()
    process.barrier()  # every process reads best.pt only after process 0 has written the last one
    kept = best_epoch(history) if recipe.keep_best else None
    if kept is not None and kept != stage.epochs:
        load_model_state(model, load_checkpoint(best_path, map_location=process.device)["model"], best_path)
    if process.main and stage.epochs == 0:
        save_checkpoint(checkpoint_dict(stage.config, model.state_dict(), stage.name, 0,
                                        meta={"history": [], "key": stage.key}), checkpoint_path)
    elif process.main and kept is not None:
        # the stage's final checkpoint holds the weights it keeps (the best validation epoch's), and
        # what resuming needs, so that a run that finds it before stage.json resumes to the end
        save_checkpoint(checkpoint_dict(stage.config, model.state_dict(), stage.name, stage.epochs,
                                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                        rng=rng_state(generator),
                                        meta={"history": history, "key": stage.key, "best_epoch": kept}),
                        checkpoint_path)
    record = {**stage_record(history), "best_epoch": kept}
    if process.main:
        write_json(stage.folder / "stage.json", record)
    process.barrier()
    return model, record


def best_epoch(history: list[dict]) -> int | None:
    """The 1-based epoch with the lowest validation MAE (the first of equals), None without validation."""
    scored = [(row["val_mae"], row["epoch"]) for row in history if math.isfinite(row.get("val_mae", math.nan))]
    return min(scored)[1] if scored else None


def load_stage_checkpoint(path: Path, stage: Stage, model: nn.Module, process: Process) -> dict:
    """Load a stage's checkpoint into ``model`` (its config checked against the stage's); returns the checkpoint."""
    state = load_checkpoint(path, map_location=process.device)
    check_config(state, stage.config, path)
    load_model_state(model, state["model"], path)
    return state


def training_forward(model: nn.Module, recipe: Recipe, process: Process) -> Callable:
    """What the training steps call: ``model`` in channels-last memory on CUDA (when the recipe asks;
    in place), in DistributedDataParallel under several processes, compiled when the recipe asks."""
    if process.device.type == "cuda" and recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    net = process.wrap(model)
    return torch.compile(net) if recipe.compile else net


def training_batch(batch: dict, recipe: Recipe, process: Process) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's images ``(B, 3, H, W)`` (channels-last on CUDA when the recipe asks) and ages ``(B,)``
    on the process's device; copies from pinned memory do not wait, batches already there are kept."""
    images = batch["image"].to(process.device, non_blocking=True)
    if process.device.type == "cuda" and recipe.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["age"].to(process.device, non_blocking=True)


def train_step(stage: Stage, step: int, forward: Callable, images: torch.Tensor, age: torch.Tensor,
               optimizer: torch.optim.Optimizer, scheduler, recipe: Recipe, tally: EpochTally,
               boxes: torch.Tensor | None = None) -> None:
    """One optimiser step, with no host sync: forward (bf16 autocast on CUDA when ``recipe.amp``;
    given ``boxes`` ``(B, n, 4)``, ADPF's stage 2 crops them instead of finding its own), loss
    (`stage_loss`), backward, the loss parts counted on the device (`EpochTally.add`), gradient
    clipping, the optimiser step (skipped on the device from a non-finite step on), the scheduler."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda" and recipe.amp):
        output = forward(images) if boxes is None else forward(images, boxes=boxes)
    losses = stage_loss(stage, output, age)
    optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    skip = tally.add(step, losses, len(images))
    if recipe.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], recipe.clip_grad_norm)
    skip_update_if(optimizer, skip)
    optimizer.step()
    scheduler.step()


def train_one_epoch(stage: Stage, epoch: int, model: nn.Module, forward: Callable, loader: DataLoader | DeviceBatches,
                    optimizer: torch.optim.Optimizer, scheduler, recipe: Recipe, process: Process,
                    checkpoint_path: Path, bar, stored: StoredBoxes | None = None) -> dict:
    """One epoch (0-based ``epoch``) of `train_step` on ``stage``'s loss, then the epoch's one host read.

    ``forward`` is ``model`` as `training_forward` made it; ``stored``: the boxes of stage 2 with
    ``recipe.fusion_boxes="once"``, moved with each batch's augmentation (and jittered, ``recipe.box_jitter``). The loss parts and the finiteness of
    every step stay on the device (`EpochTally`) and are read once, after the last step; a step
    whose loss is NaN or ±inf (and every later step of the epoch) is skipped on the device and
    the read raises `NonFiniteTrainingError` naming it (`check_finite_step`). Returns the epoch's
    history row: epoch (1-based), lr (at its start), loss and loss parts averaged over the images,
    train_mae, seconds, images_per_s.
    """
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)
    steps = len(loader)
    model.train()
    row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
    tally, tic = EpochTally(process.device), time.perf_counter()
    for step, batch in enumerate(loader):
        images, age = training_batch(batch, recipe, process)
        boxes = None if stored is None else stored.moved(batch, epoch, step)
        train_step(stage, step, forward, images, age, optimizer, scheduler, recipe, tally, boxes)
        bar.update()
    means, bad_step, bad_values = tally.read()  # waits for the device: the epoch's only sync
    seconds = time.perf_counter() - tic
    check_finite_step(stage, bad_step, bad_values, epoch, steps, checkpoint_path, process)
    process.share_buffers(model)  # BatchNorm statistics: every process keeps process 0's
    row.update({f"loss_{k}" if k != "total" else "loss": v for k, v in means.items()})
    row["train_mae"] = row.pop("loss_mae", float("nan"))
    row.update(seconds=seconds, images_per_s=tally.seen * process.world_size / seconds)
    bar.set_postfix(epoch=epoch + 1, loss=f"{row.get('loss', float('nan')):.3f}", mae=f"{row['train_mae']:.2f}")
    return row


def validate(model: nn.Module, loader: DataLoader, recipe: Recipe) -> dict:
    """``evaluate.summarize`` of ``model``'s predictions on ``loader`` (mae, cs, age_groups, mean_std, count)."""
    return summarize(predict(model, loader, amp=recipe.amp))


def calibrate(model: nn.Module, stage: Stage, val_loader: DataLoader, recipe: Recipe, process: Process) -> nn.Module:
    """Fit the ± on the validation faces (``evaluate.fit_std_scale``) and keep it in the model's
    config and in the stage's checkpoint (``config.std_scale``; book/open_choices.md, choice 15)."""
    model.config = model.config.replace(std_scale=1.0)
    predictions = predict(model, val_loader, amp=recipe.amp)
    model.config = model.config.replace(std_scale=fit_std_scale(predictions.errors, predictions.std))
    if process.main:
        path = stage.folder / "checkpoint.pt"
        state = load_checkpoint(path)
        state["config"] = model.config.to_dict()
        save_checkpoint(state, path)
    process.barrier()
    return model


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
        recipe: a `Recipe` or the name of one in `adpf.recipes.RECIPES`.
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
            if split["val"].size:
                model = calibrate(model, stages[-1], make_loader(data, split["val"], recipe, process, train=False),
                                  recipe, process)
            metrics = {}
            for name in ("test", "val"):
                if split[name].size:
                    metrics[name] = validate(model, make_loader(data, split[name], recipe, process, train=False),
                                             recipe)
        result = TrainResult(
            config=config.to_dict(), data={"root": str(data.root), **identity["data"]},
            split=identity["split"], recipe=recipe.to_dict(), metrics=metrics,
            history={k: r["history"] for k, r in records.items()},
            timings={k: r["seconds"] for k, r in records.items()},
            throughput={k: r["images_per_s"] for k, r in records.items()},
            hardware={**hardware(), "device": str(process.device), "world_size": process.world_size},
            versions=versions(), checkpoint=str(stages[-1].folder / "checkpoint.pt"),
            stage_keys={s.name: s.key for s in stages},
            best_epochs={k: r.get("best_epoch") for k, r in records.items()}, std_scale=model.config.std_scale)
        if process.main:
            write_json(result_path, result.to_dict())
        process.barrier()
        return result
    finally:
        close_process(created)
