"""The setting a chapter runs in: one call turns its parameters into config, data, split, recipe and device.

    setting = book_setting(profile="cpu", n_faces=None, epochs=None, device="auto", seed=0)
    setting.config, setting.data, setting.split, setting.recipe, setting.device
    setting.describe()              # the table a chapter shows
    setting.train("plain_cnn")      # train (or load from the cache) one variant in this setting

Three words, one meaning each:

- a **preset** is an `ADPFConfig` by name (``adpf.config.PRESETS``: "cpu", "paper"): the
  network's sizes and switches;
- a **recipe** is a `Recipe` by name (``adpf.recipes.RECIPES``: "paper", "cpu", "book"): how to
  train it (optimiser, schedule, epochs);
- a **profile** is what a chapter runs at (`PROFILES`): a preset, a recipe, each with the
  fields it changes, and a number of drawn faces. A profile is named after its preset. The
  "cpu" profile, the chapters' default, trains the "cpu" preset with FusionNet's main stream
  at full resolution with residual stages, and the "book" recipe with AdamW and a 20-epoch
  stage 2 whose boxes are found once: the setting of the record ``main-stream-synthetic``,
  whose curves level out where the SGD recipe's were still falling (book/open_choices.md,
  choice 20). "cpu-sgd" is the book's first setting (the preset as built, the "book" recipe
  as named: SGD, 10 + 8 epochs), at which the SGD records of chapter 10 were made; the "cpu"
  recipe, the command line's default, is meant for ~10,000 faces. The "paper" profile is the
  paper's preset with the "gpu" recipe (the paper's schedule compressed for one card).
The chapters' parameter is ``profile``; the command line, which sets preset and recipe apart,
has ``--preset`` and ``--recipe``.

The data are the drawn faces (``adpf.data.synthetic``, drawn with seed 0), split by person
into 70 % training, 10 % validation and 20 % test faces (split seed 0). Faces and split are
the same for every ``seed``: it seeds the training alone (initial weights, shuffling,
augmentation), as the seeds of a recorded run (``adpf experiments ... --seeds``) do, so the
model of a setting is the one the command line trains with the same values
(`Setting.command` writes that line), and row (model, seed) of a record made at a setting's
values is that setting's model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adpf.cache import code_version, stage_dir
from adpf.checkpoint import checkpoint_dict, save_checkpoint
from adpf.config import ADPFConfig, get_preset
from adpf.data.prepared import Prepared, default_dataset, load_prepared
from adpf.data.protocols import Split, subject_split
from adpf.recipes import Recipe, get_recipe
from adpf.train import TrainResult, train

#: Shares of the drawn faces, by person (the command line's ``--val`` and ``--test`` defaults).
SPLIT_SHARES = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass(frozen=True)
class Profile:
    """What a chapter runs at: a config preset and a recipe, each with the fields it changes
    (as ``--set`` and ``--set-recipe`` change them on the command line), and the number of drawn faces."""

    preset: str
    recipe: str
    n_faces: int
    config_changes: dict = field(default_factory=dict)
    recipe_changes: dict = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    # main-stream-synthetic's setting: chapter 10's records at it, three seeds each, are the
    # book's models trained again (benchmarks/results/recipes-2026-12-07.md, "The record")
    "cpu": Profile(preset="cpu", recipe="book", n_faces=3000,
                   config_changes={"fusion_stem_stride": 1, "fusion_block": "residual"},
                   recipe_changes={"fusion_epochs": 20, "fusion_boxes": "once", "optimizer": "adamw",
                                   "lr": 1e-3, "weight_decay": 0.05}),
    # the book's first setting, of the SGD records (ablation-synthetic, heads-synthetic, ...)
    "cpu-sgd": Profile(preset="cpu", recipe="book", n_faces=3000),
    # the paper's preset at its 128×128, trained with the "gpu" recipe: the paper's own (SGD at
    # lr 0.1, batch 32, no clipping) diverges to NaN within the first epoch on the drawn faces
    # (benchmarks/results/2026-12-01-training-fixes.md); "gpu" is its schedule compressed, clipped
    "paper": Profile(preset="paper", recipe="gpu", n_faces=10_000),
}


@dataclass(frozen=True)
class Setting:
    """A config, the data and split it trains on, a recipe and the device (see the module doc).

    profile: the name of its profile in `PROFILES`.
    device: where the recipe trains, resolved ("cpu", "cuda").
    """

    profile: str
    config: ADPFConfig
    data: Prepared
    split: Split
    recipe: Recipe
    device: str

    def train(self, variant: str | None = None, *, callback=None, **changes) -> TrainResult:
        """Train ``config`` (with ``variant`` and any field ``changes``) in this setting, or
        load it from the cache."""
        config = self.config.replace(**({"variant": variant} if variant else {}), **changes)
        return train(config, self.data, self.split, self.recipe, progress=False, callback=callback)

    def attention_snapshots(self) -> tuple[TrainResult, TrainResult, list[Path]]:
        """AttentionNet trained with its weights kept after every epoch (`keep_epoch`).

        Returns the untrained network's result (the same training with zero epochs: a stage
        seeds itself from its name and the recipe's seed), the trained one, and the files of
        the kept weights, one per epoch. A model trained before without keeping them (by the
        command line, say) is trained again, which on a CPU gives the same weights.
        """
        config = self.config.replace(variant="attention_only")
        start = train(config, self.data, self.split, self.recipe.replace(attention_epochs=0), progress=False)
        result = train(config, self.data, self.split, self.recipe, progress=False, callback=keep_epoch)
        kept = _kept_epochs(result)
        if len(kept) != self.recipe.attention_epochs:
            result = train(config, self.data, self.split, self.recipe, use_cache=False, progress=False,
                           callback=keep_epoch)
            kept = _kept_epochs(result)
        return start, result, kept

    @property
    def spec(self) -> Profile:
        """The profile this setting was made from (its preset, recipe and their changes)."""
        return PROFILES[self.profile]

    def command(self, variant: str = "adpf") -> str:
        """The ``adpf train`` line that trains this setting's ``variant`` (drawn faces only)."""
        spec = self.spec
        parts = ["adpf train", f"--preset {spec.preset}", f"--variant {variant}", "--data synthetic",
                 f"--synthetic-n {len(self.data)}", f"--recipe {spec.recipe}"]
        named = get_recipe(spec.recipe)
        if (self.recipe.attention_epochs, self.recipe.fusion_epochs) != (named.attention_epochs, named.fusion_epochs):
            parts.append(f"--epochs {self.recipe.attention_epochs},{self.recipe.fusion_epochs}")
        parts += [f"--set-recipe {name}={_word(value)}" for name, value in spec.recipe_changes.items()
                  if name not in ("attention_epochs", "fusion_epochs")]
        parts += [f"--set {name}={_word(value)}" for name, value in spec.config_changes.items()]
        if self.recipe.seed:
            parts.append(f"--seed {self.recipe.seed}")
        return " ".join(parts)

    def describe(self) -> pd.DataFrame:
        """The setting as a table for a chapter's page: one row per part (index), its value."""
        c, r, meta, spec = self.config, self.recipe, self.data.meta, self.spec
        people = {name: meta["subject"].iloc[getattr(self.split, name)].nunique() for name in SPLIT_SHARES}
        rows = {
            "profile": f"{self.profile} (preset {spec.preset}{_changed(spec.config_changes)}; "
                       f"recipe {spec.recipe}{_changed(spec.recipe_changes)})",
            "model": f"{c.image_size}×{c.image_size} input, {c.heads} heads, "
                     f"X = {c.x_size}×{c.x_size}×{c.x_channels}",
            "data": f"{len(self.data):,} {self.data.info.get('name', '')} faces "
                    f"of {meta['subject'].nunique():,} people, ages {meta['age'].min():.0f}–{meta['age'].max():.0f}",
            "train / val / test": " / ".join(f"{len(getattr(self.split, n)):,}" for n in SPLIT_SHARES)
                                  + " faces; " + " / ".join(str(people[n]) for n in SPLIT_SHARES) + " people",
            "epochs": f"{r.attention_epochs} (stage 1) + {r.fusion_epochs} (stage 2)",
            "optimiser": f"{r.optimizer}, lr {r.lr:g}, {r.schedule}, batch {r.batch_size}"
                         + (f", warm-up {r.warmup_epochs}" if r.warmup_epochs else "")
                         + (f", clip {r.clip_grad_norm:g}" if r.clip_grad_norm else ""),
            "training seed": str(r.seed),
            "device": self.device,
            "code version": code_version(),
        }
        return pd.DataFrame({"value": rows})


def book_setting(profile: str = "cpu", n_faces: int | None = None, epochs: int | None = None,
                 device: str = "auto", seed: int = 0) -> Setting:
    """The setting of a chapter from its parameters.

    Args:
        profile: a name in `PROFILES`.
        n_faces: drawn faces (None: the profile's).
        epochs: epochs of each training stage (None: the recipe's).
        device: "auto" (CUDA when there is one), "cpu", "cuda" or "cuda:N".
        seed: the training seed (faces and split stay those of seed 0).
    """
    if profile not in PROFILES:
        raise KeyError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    chosen = PROFILES[profile]
    config = get_preset(chosen.preset).replace(**chosen.config_changes)
    data = load_prepared(default_dataset(config.image_size, n=n_faces or chosen.n_faces, seed=0))
    split = subject_split(data.meta, **SPLIT_SHARES, seed=0)
    stage_epochs = {} if epochs is None else {"attention_epochs": epochs, "fusion_epochs": epochs}
    recipe = get_recipe(chosen.recipe, device=device, seed=seed, **{**chosen.recipe_changes, **stage_epochs})
    return Setting(profile, config, data, split, recipe, str(recipe.resolved_device()))


def _changed(changes: dict) -> str:
    """``" with a=1, b='x'"`` for a profile's changes to its preset or recipe ("" for none)."""
    return " with " + ", ".join(f"{k}={v!r}" for k, v in changes.items()) if changes else ""


def _word(value) -> str:
    """A ``--set`` value as the command line reads it: a string bare, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def keep_epoch(stage, row: dict, model) -> None:
    """A `train` callback: save the weights after every epoch beside the stage's checkpoint
    (``epochs/NNN.pt`` in the stage's cache folder)."""
    save_checkpoint(checkpoint_dict(stage.config, model.state_dict(), stage.name, row["epoch"]),
                    stage.folder / "epochs" / f"{row['epoch']:03d}.pt")


def _kept_epochs(result: TrainResult) -> list[Path]:
    return sorted((stage_dir("attention", result.stage_keys["attention"]) / "epochs").glob("*.pt"))

