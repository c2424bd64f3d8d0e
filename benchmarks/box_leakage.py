"""Do ADPF's boxes tell the age of the faces they were found on better than of other faces?

ADPF's FusionNet overfits where the same network with fixed or placed boxes does not
(``benchmarks/results/recipes-2026-12-07.md``). One way it could: stage 1's AttentionNet was
trained on the training faces, so its maps, and the boxes cut from them (``ADPF.face_boxes``),
might carry more of a training face's age than of a new face's, and FusionNet would learn to read
the age from where and how large the boxes are. This script measures that channel alone. For each
seed of a record on the drawn faces, it loads the row's stage-1 AttentionNet from the cache, finds
the boxes of every face of the book's split, fits a ridge regression from the boxes' coordinates
(linear, and with every product of two coordinates) to the age on the training faces, and prints
its MAE on the training, validation and test faces, beside the AttentionNet's own MAE and the
constant answer. Equal MAEs on the three splits: the boxes carry no more of the training faces'
ages than of others'.

    python benchmarks/box_leakage.py benchmarks/results/main-stream-synthetic.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adpf.cache import cache_root  # noqa: E402
from adpf.checkpoint import load_model  # noqa: E402
from adpf.data.prepared import images_to_tensor  # noqa: E402
from adpf.losses import predict_age  # noqa: E402
from adpf.networks import ADPF  # noqa: E402
from adpf.setting import book_setting  # noqa: E402

SPLITS = ("train", "val", "test")


def maes(guess: dict, age: dict) -> str:
    """``train / val / test`` MAE of ``guess`` against ``age`` (both by split)."""
    return " / ".join(f"{np.abs(guess[s] - age[s]).mean():5.2f}" for s in SPLITS)


def box_features(boxes: np.ndarray, image_size: int, products: bool) -> np.ndarray:
    """``(N, n, 4)`` boxes as ``(N, F)`` features: the coordinates over the image side, with
    every product of two of them if ``products``, and a constant."""
    f = boxes.reshape(len(boxes), -1).astype(np.float64) / image_size
    if products:
        pairs = itertools.combinations_with_replacement(range(f.shape[1]), 2)
        f = np.concatenate([f] + [f[:, [i]] * f[:, [j]] for i, j in pairs], axis=1)
    return np.concatenate([f, np.ones((len(f), 1))], axis=1)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights of min ||x w - y||² / N + alpha ||w||² (the constant, last column, not penalised)."""
    penalty = alpha * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x / len(x) + penalty, x.T @ y / len(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path, help="a record on the drawn faces with AttentionNet stage keys")
    parser.add_argument("--alpha", type=float, default=1e-2, help="ridge penalty")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    record = json.loads(args.record.read_text())
    keys = {row["seed"]: row["stage_keys"]["attention"] for row in record["rows"]
            if row["model"] == "ADPF" and "attention" in row.get("stage_keys", {})}
    if not keys:
        raise SystemExit(f"{args.record}: no ADPF row with a stage-1 key")
    setting = book_setting("cpu", None, None, "cpu", 0)
    ages = setting.data.meta["age"].to_numpy().astype(np.float64)
    print(f"{args.record.name}: {len(setting.data)} drawn faces, split "
          + " / ".join(str(len(getattr(setting.split, s))) for s in SPLITS) + "; MAE in years, "
          + "train / val / test")
    for seed, key in sorted(keys.items()):
        path = cache_root() / "runs" / f"attention-{key}" / "checkpoint.pt"
        attention = load_model(path).eval()
        model = ADPF(attention.config.replace(variant="adpf"))
        model.attention_net.load_state_dict(attention.state_dict())
        model.freeze_attention()
        boxes, age, predicted = {}, {}, {}
        for split in SPLITS:
            index = getattr(setting.split, split)
            images = images_to_tensor(np.asarray(setting.data.images[index]))
            with torch.no_grad():
                out, found = model.face_boxes(images)
            boxes[split], age[split] = found.numpy(), ages[index]
            predicted[split] = predict_age(out.logits, model.config)[0].numpy()

        constant = {s: np.full(len(age[s]), age["train"].mean()) for s in SPLITS}
        print(f"seed {seed} (stage 1 {key}): constant answer {maes(constant, age)}; AttentionNet {maes(predicted, age)}")
        size = model.config.image_size
        for products in (False, True):
            w = ridge(box_features(boxes["train"], size, products), age["train"], args.alpha)
            guess = {s: box_features(boxes[s], size, products) @ w for s in SPLITS}
            print(f"  boxes -> age, ridge on {'coordinates and their products' if products else 'coordinates':31}"
                  f" {maes(guess, age)}")


if __name__ == "__main__":
    main()
