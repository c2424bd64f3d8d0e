"""How much the trained FusionNets of a record lean on their patches (`adpf.evaluate.patch_reliance`):
test MAE with their own patches, with the patches of another face, and with blank patches.

FusionNet (Eq. 8) reads the face and the n patches cut from AttentionNet's ranked maps. If the
patches carried what the main stream cannot see, giving it another face's patches (the batch
rolled by one) should cost more than the spread of the estimate; if it barely changes, the
network has learned to read the face and to ignore the patches. Reads the trained models of a
recorded run from the cache (``adpf experiments ... --record``; the rows' ``stage_keys``)::

    python benchmarks/patch_reliance.py benchmarks/results/curves-synthetic.json --models "ADPF,fixed patches"

Prints one line per (model, seed) and a Markdown table of the means over seeds.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from adpf.cache import stage_dir
from adpf.checkpoint import load_model
from adpf.data.prepared import PreparedFaces
from adpf.evaluate import PATCH_SWAPS, patch_reliance
from adpf.experiments import read_record
from adpf.setting import book_setting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record")
    parser.add_argument("--models", default="ADPF,fixed patches")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record = read_record(args.record)
    setting = book_setting("cpu", n_faces=record["data"]["count"])
    test = setting.split.test
    batch = next(iter(torch.utils.data.DataLoader(PreparedFaces(setting.data, test), batch_size=len(test))))
    images, ages = batch["image"], batch["age"]
    rows = {}
    for row in record["rows"]:
        if row["model"] not in args.models.split(","):
            continue
        stage = "fusion" if "fusion" in row["stage_keys"] else "single"
        path = stage_dir(stage, row["stage_keys"][stage]) / "checkpoint.pt"
        if not path.is_file():
            print(f"{row['model']} seed {row['seed']}: {path} is not in the cache; train it with the record's command",
                  file=sys.stderr)
            continue
        found = patch_reliance(load_model(path), images, ages)
        rows.setdefault(row["model"], []).append(found)
        print(f"{row['model']:<16} seed {row['seed']}: " + ", ".join(f"{k} {v:.2f}" for k, v in found.items()),
              flush=True)
    print(f"\nTest MAE (years), {len(test)} test faces, mean ± std over seeds; {args.record}\n")
    print("| model | seeds | " + " | ".join(PATCH_SWAPS) + " |\n|---|---|" + "---|" * len(PATCH_SWAPS))
    for model, found in rows.items():
        cells = []
        for name in PATCH_SWAPS:
            values = [f[name] for f in found]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.2f} ± {spread:.2f}")
        print(f"| {model} | {len(found)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
