"""One ADPF model of real faces, recorded for the book: what ``adpf train --data data/utkface-64``
makes, scored by age band, on a second dataset, and looked at on a photograph.

    python benchmarks/real_faces.py --data data/utkface-64 --test-on data/aaf-64 \\
        --record benchmarks/results/real-faces-utkface.json

Trains ADPF with the ``cpu`` preset and recipe, seed 0, on the command line's default split
(70 / 10 / 20 % by person, split seed 0), one thread: the same key as ``adpf train``, so the
training is taken from the cache when that command has run. Then records:

- the test MAE, CS(5) and the calibration of the ±, and MAE per age band beside the constant
  answer (always the mean training age) per band;
- the MAE on every face of ``--test-on`` (a dataset no model saw), beside the constant answer;
- on the astronaut portrait of scikit-image, aligned with dlib as the datasets are: the
  estimate ± σ, the ranked maps ``(n, x, x)``, their a_k and the boxes (x0, y0, x1, y1) in pixels
  of the aligned face, so that chapter 10 draws them without the model, which is not shipped
  (its faces' licence is for research).

The record holds no face: the chapter aligns the astronaut itself.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adpf.cache import code_version, write_json  # noqa: E402
from adpf.checkpoint import load_model  # noqa: E402
from adpf.config import get_preset  # noqa: E402
from adpf.data.align import align_face  # noqa: E402
from adpf.data.prepared import PreparedFaces, images_to_tensor, load_prepared  # noqa: E402
from adpf.data.protocols import subject_split  # noqa: E402
from adpf.evaluate import age_group_errors, attention_report, constant_baseline, mae, predict, summarize  # noqa: E402
from adpf.experiments import RECORD_FORMAT  # noqa: E402
from adpf.losses import predict_age  # noqa: E402
from adpf.recipes import get_recipe  # noqa: E402
from adpf.setting import SPLIT_SHARES  # noqa: E402
from adpf.train import hardware, train, versions  # noqa: E402


def astronaut(model: torch.nn.Module) -> dict:
    """The model on scikit-image's astronaut portrait, aligned with dlib: estimate, σ, ranked
    maps, their a_k and the boxes."""
    from skimage import data as skimage_data

    config = model.config
    face = align_face(skimage_data.astronaut(), out_size=config.image_size).image
    with torch.no_grad():
        out = model(images_to_tensor(face)[None])
    age, std = (float(v) for v in predict_age(out.logits, config))
    att = out.attention
    return {"name": "astronaut (scikit-image)", "age": age, "std": std,
            "maps": att.ranked[0].float().tolist(), "a": att.scales[att.order].float().tolist(),
            "boxes": out.boxes[0].tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/utkface-64", help="a prepared folder of real faces")
    p.add_argument("--test-on", default="data/aaf-64", help="a second prepared folder, tested whole")
    p.add_argument("--record", default="benchmarks/results/real-faces-utkface.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    data, other = load_prepared(args.data), load_prepared(args.test_on)
    split = subject_split(data.meta, **SPLIT_SHARES, seed=0)
    config, recipe = get_preset("cpu", variant="adpf", image_size=data.image_size), get_recipe("cpu")
    start = time.perf_counter()
    result = train(config, data, split, recipe, progress=False)
    print(f"trained ({'cached' if result.cached else f'{time.perf_counter() - start:.0f} s'})")
    model = load_model(result.checkpoint)

    ages = data.meta["age"].to_numpy(np.float64)
    test = predict(model, DataLoader(PreparedFaces(data, split.test), batch_size=64))
    constant = constant_baseline(ages[split.train], test.age)
    bands = age_group_errors(test.age, test.errors).set_index("group")
    bands["constant_mae"] = age_group_errors(test.age, constant).set_index("group")["mae"]
    summary = summarize(test)
    on_other = predict(model, DataLoader(PreparedFaces(other), batch_size=64))
    report = attention_report(model, DataLoader(PreparedFaces(data, split.test), batch_size=64))
    boxes = {k: v for k, v in report.items() if k.startswith("box_")}
    record = {
        "format": RECORD_FORMAT, "kind": "real-faces",
        "command": f"python benchmarks/real_faces.py --data {args.data} --test-on {args.test_on} "
                   f"--record {args.record}",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "code_version": code_version(), "versions": versions(), "hardware": hardware(),
        "data": {"name": data.info.get("name"), "count": len(data), "image_size": data.image_size},
        "split": {k: int(len(getattr(split, k))) for k in ("train", "val", "test")},
        "recipe": recipe.to_dict(), "config": config.to_dict(),
        "train_seconds": result.timings, "best_epochs": result.best_epochs, "std_scale": result.std_scale,
        "test": {"mae": summary["mae"], "cs5": summary["cs"][5], **summary["calibration"],
                 "constant_mae": mae(constant)},
        "bands": bands.reset_index()[["group", "count", "mae", "constant_mae"]].to_dict("records"),
        "boxes": boxes, "head_overlap": report["head_overlap"],
        "test_on": {"name": other.info.get("name"), "count": len(other), "mae": mae(on_other.errors),
                    "constant_mae": mae(constant_baseline(ages[split.train], on_other.age))},
        "photo": astronaut(model),
    }
    write_json(Path(args.record), record)
    print(f"{args.record}: test MAE {summary['mae']:.2f} (constant {mae(constant):.2f}), "
          f"{record['test_on']['name']} {record['test_on']['mae']:.2f} "
          f"(constant {record['test_on']['constant_mae']:.2f}), astronaut {record['photo']['age']:.1f} "
          f"± {record['photo']['std']:.1f}")


if __name__ == "__main__":
    main()
