"""Training and validation MAE per epoch of one model under a recipe with some fields changed:
what the recipes in ``adpf/recipes.py`` were chosen from (benchmarks/results/recipes-2026-12-04.md).

Equal curves that still fall mean underfitting (train longer, optimise better); a gap means
overfitting; a jump between epochs is a bug or a step too large until shown otherwise.

    python benchmarks/recipe_curves.py --data data/utkface-64 --variant plain_cnn \\
        --recipe cpu --set-recipe fusion_epochs=10 --set-recipe optimizer=adamw --set-recipe lr=0.001
    python benchmarks/recipe_curves.py --data synthetic:3000 --variant adpf --recipe book

The split is the command line's default (70 / 10 / 20 % by person, split seed 0), the preset
cpu, one thread. Prints one line per epoch, then test MAE, the calibration of the ± and, for
attention variants on the drawn faces, head overlap and the share of attention on the regions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adpf.cli import field_values  # noqa: E402
from adpf.config import ADPFConfig, get_preset  # noqa: E402
from adpf.data.prepared import Prepared, default_dataset, load_prepared  # noqa: E402
from adpf.data.protocols import Split, subject_split  # noqa: E402
from adpf.experiments import attention_columns  # noqa: E402
from adpf.recipes import Recipe, get_recipe  # noqa: E402
from adpf.setting import SPLIT_SHARES  # noqa: E402
from adpf.train import train  # noqa: E402


def data_and_split(spec: str) -> tuple[Prepared, Split]:
    """The faces named by ``spec`` (a prepared folder, or ``synthetic:N``: N drawn faces at 64 px) and
    the command line's default split of them (70 / 10 / 20 % by person, split seed 0)."""
    if spec.startswith("synthetic"):
        data = load_prepared(default_dataset(image_size=64, n=int(spec.split(":")[1]), progress=False))
    else:
        data = load_prepared(spec)
    return data, subject_split(data.meta, **SPLIT_SHARES, seed=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic:3000", help="a prepared folder, or synthetic:N")
    p.add_argument("--variant", default="adpf")
    p.add_argument("--recipe", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config changes")
    p.add_argument("--set-recipe", action="append", default=[], metavar="FIELD=VALUE", help="recipe changes")
    args = p.parse_args()
    torch.set_num_threads(1)
    data, split = data_and_split(args.data)
    config = get_preset("cpu", variant=args.variant, **field_values(args.set, ADPFConfig, "--set"))
    recipe = get_recipe(args.recipe, **field_values(args.set_recipe, Recipe, "--set-recipe"))
    start = time.perf_counter()
    result = train(config, data, split, recipe, progress=False)
    for stage, rows in result.history.items():
        for row in rows:
            print(f"{stage} epoch {row['epoch']:2d}  lr {row['lr']:.3g}  train MAE {row['train_mae']:.2f}  "
                  f"val MAE {row.get('val_mae', float('nan')):.2f}  {row['seconds']:.0f} s")
    test = result.metrics["test"]
    print(f"test MAE {test['mae']:.2f}  val MAE {result.metrics['val']['mae']:.2f}  kept epochs {result.best_epochs}  "
          f"±1σ {test['calibration']['within_1std']:.1%}  ±2σ {test['calibration']['within_2std']:.1%}  "
          f"({time.perf_counter() - start:.0f} s)")
    if data.masks is not None and args.variant in ("adpf", "attention_only"):
        print(attention_columns(result, data, split.test))


if __name__ == "__main__":
    main()
