"""Does SGD still collapse AttentionNet to a one-hot age? Short trainings under several recipes.

Trains AttentionNet alone (cpu preset, ``attention_only``) on the book's setting (the embedded
synthetic faces, 3,000 at 64 px, split by person 70/10/20, seed 0) under each recipe below and
prints, after every epoch, on the validation faces: the MAE, the mean standard deviation of
the predicted age distributions (years), the share of faces whose distribution is one-hot
(largest class probability ≥ 0.99), and the spread (std) of the predicted ages over the faces
(near 0: every face gets the same age).

Recipes (all SGD, momentum 0.9, weight decay 5e-4, batch 32):

``paper``       lr 0.1 constant (the paper's first 50 epochs), no warm-up, no clipping;
``warmup``      lr 0.1, one warm-up epoch, cosine decay, no clipping;
``clipped``     lr 0.02, one warm-up epoch, cosine decay, gradients clipped to norm 1
                (the cpu and book recipes before this measurement);
``unclipped``   the same without clipping;
``clipped_0.1`` lr 0.1, one warm-up epoch, cosine decay, gradients clipped to norm 1;
``no_warmup``   lr 0.02, no warm-up, cosine decay, gradients clipped to norm 1.

A training whose loss turns NaN stops (``NonFiniteTrainingError``) and is reported as diverged.

Usage: ADPF_CACHE_DIR=/tmp/cache python benchmarks/recipe_collapse.py [--epochs 4] [--recipes ...]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from adpf.config import get_preset
from adpf.data.prepared import PreparedFaces, default_dataset, load_prepared
from adpf.data.protocols import subject_split
from adpf.evaluate import model_device
from adpf.losses import age_classes, age_distribution, age_std, expected_age
from adpf.recipes import Recipe
from adpf.train import NonFiniteTrainingError, train

RECIPES = {
    "paper": Recipe(lr=0.1, schedule="step", lr_step=50, warmup_epochs=0, clip_grad_norm=None),
    "warmup": Recipe(lr=0.1, schedule="cosine", warmup_epochs=1, clip_grad_norm=None),
    "clipped": Recipe(lr=0.02, schedule="cosine", warmup_epochs=1, clip_grad_norm=1.0),
    "unclipped": Recipe(lr=0.02, schedule="cosine", warmup_epochs=1, clip_grad_norm=None),
    "clipped_0.1": Recipe(lr=0.1, schedule="cosine", warmup_epochs=1, clip_grad_norm=1.0),
    "no_warmup": Recipe(lr=0.02, schedule="cosine", warmup_epochs=0, clip_grad_norm=1.0),
}


@torch.no_grad()
def distribution_stats(model, loader) -> dict:
    """Validation MAE, mean predicted std, one-hot share and spread of the predicted ages."""
    model.eval()
    means, stds, tops, truth = [], [], [], []
    for batch in loader:
        logits = model(batch["image"].to(model_device(model))).logits.float()
        probs = age_distribution(logits, model.config.eq9)
        ages = age_classes(model.config, probs)
        means.append(expected_age(probs, ages))
        stds.append(age_std(probs, ages))
        tops.append(probs.amax(dim=-1))
        truth.append(batch["age"].float())
    model.train()
    mean, std, top, age = (torch.cat(x) for x in (means, stds, tops, truth))
    return {"val_mae": float((mean - age).abs().mean()), "mean_std": float(std.mean()),
            "one_hot": float((top >= 0.99).double().mean()), "age_spread": float(mean.std())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = get_preset("cpu", variant="attention_only")
    data = load_prepared(default_dataset(config.image_size, n=3000, seed=0))
    split = subject_split(data.meta, train=1 - 0.2 - 0.1, val=0.1, test=0.2, seed=0)
    val = DataLoader(PreparedFaces(data, split.val), batch_size=64)
    print(f"# recipe_collapse: {time.strftime('%Y-%m-%d %H:%M')}, {len(split.train)} train / {len(split.val)} val "
          f"faces, cpu preset, attention_only, {args.epochs} epochs, seed {args.seed}, 1 thread")
    print(f"{'recipe':<10}{'epoch':>6}{'lr':>9}{'loss':>9}{'val_mae':>9}{'mean_std':>10}{'one_hot':>9}"
          f"{'age_spread':>11}{'seconds':>9}")
    for name in args.recipes:
        recipe = RECIPES[name].replace(attention_epochs=args.epochs, fusion_epochs=args.epochs, device="cpu",
                                       seed=args.seed)

        def report(stage, row, model, name=name):
            s = distribution_stats(model, val)
            print(f"{name:<10}{row['epoch']:>6}{row['lr']:>9.4f}{row['loss']:>9.3f}{s['val_mae']:>9.2f}"
                  f"{s['mean_std']:>10.2f}{s['one_hot']:>9.2f}{s['age_spread']:>11.2f}{row['seconds']:>9.0f}",
                  flush=True)

        try:
            result = train(config, data, split, recipe, progress=False, callback=report)
        except NonFiniteTrainingError as e:
            print(f"{name:<10} diverged: {e}", flush=True)
            continue
        if result.cached:
            print(f"{name:<10} (cached: delete the cache entry to see its epochs) test MAE {result.mae:.2f}")
        else:
            print(f"{name:<10} test MAE {result.mae:.2f}", flush=True)


if __name__ == "__main__":
    main()
