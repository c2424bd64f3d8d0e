"""Does the diversity loss keep the heads apart? AttentionNet trained with and without it, over seeds.

Trains AttentionNet alone (``attention_only``, cpu preset) on the book's setting (the embedded
synthetic faces, 3,000 at 64 px, split by person 70/10/20 with split seed 0) with
``diversity_weight`` λ = 0.01 (Eq. 14, maps scaled by ``config.diversity_maps``) and λ = 0, for
several training seeds, and prints per run and as mean ± std over the seeds: the head overlap
(``evaluate.attention_report``: mean pairwise cosine of the heads' maps shifted to a minimum of
zero; 1 = the same map, 0 = disjoint), the share of the attention on the true age regions
(``region_share``, against ``region_area``, what a uniform map scores), and the MAE, on the
validation faces (what choices are made on) and on the test faces.

Usage: ADPF_CACHE_DIR=/tmp/cache python benchmarks/diversity_overlap.py [--seeds 0 1 2] [--epochs 4]
       [--recipe book] [--weights 0.01 0]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from adpf.checkpoint import load_model
from adpf.config import get_preset
from adpf.data.prepared import PreparedFaces, default_dataset, load_prepared
from adpf.data.protocols import subject_split
from adpf.evaluate import attention_report
from adpf.recipes import get_recipe
from adpf.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="attention epochs (default: the recipe's)")
    parser.add_argument("--recipe", default="book")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.0], help="values of λ")
    parser.add_argument("--maps", default=None, help="config.diversity_maps (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    changes = {"variant": "attention_only"} | ({"diversity_maps": args.maps} if args.maps else {})
    base = get_preset("cpu", **changes)
    data = load_prepared(default_dataset(base.image_size, n=3000, seed=0))
    split = subject_split(data.meta, train=1 - 0.2 - 0.1, val=0.1, test=0.2, seed=0)
    loaders = {name: DataLoader(PreparedFaces(data, getattr(split, name)), batch_size=64) for name in ("val", "test")}
    recipe = get_recipe(args.recipe, device="cpu", **({"attention_epochs": args.epochs} if args.epochs else {}))
    print(f"# diversity_overlap: {time.strftime('%Y-%m-%d %H:%M')}, cpu preset, attention_only, "
          f"diversity_maps={base.diversity_maps}, recipe {args.recipe} with {recipe.attention_epochs} attention "
          f"epochs, {len(split.train)} train / {len(split.val)} val / {len(split.test)} test faces, 1 thread")
    print(f"{'lambda':>7}{'seed':>5}{'overlap val':>12}{'test':>7}{'region val':>11}{'test':>7}"
          f"{'MAE val':>8}{'test':>7}{'minutes':>8}")
    rows = {}
    for seed in args.seeds:
        for weight in args.weights:
            result = train(base.replace(diversity_weight=weight), data, split, recipe.replace(seed=seed),
                           progress=False)
            model = load_model(result.checkpoint)
            report = {name: attention_report(model, loader) for name, loader in loaders.items()}
            row = {"overlap_val": report["val"]["head_overlap"], "overlap_test": report["test"]["head_overlap"],
                   **{f"region_{n}": statistics.mean(report[n]["region_share"]) for n in ("val", "test")},
                   "mae_val": result.metrics["val"]["mae"], "mae_test": result.mae}
            rows.setdefault(weight, []).append(row)
            print(f"{weight:>7g}{seed:>5}{row['overlap_val']:>12.3f}{row['overlap_test']:>7.3f}"
                  f"{row['region_val']:>11.3f}{row['region_test']:>7.3f}{row['mae_val']:>8.2f}{row['mae_test']:>7.2f}"
                  f"{sum(result.timings.values()) / 60:>8.1f}", flush=True)
    print(f"region_area (uniform map) val {report['val']['region_area']:.3f}, test {report['test']['region_area']:.3f}")
    print("mean ± std over seeds:")
    for weight, runs in rows.items():
        cells = "  ".join(f"{k} {statistics.mean(r[k] for r in runs):.3f} ± "
                          f"{statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0:.3f}" for k in runs[0])
        print(f"lambda {weight:g}: {cells}")


if __name__ == "__main__":
    main()
