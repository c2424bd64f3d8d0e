"""The patch boxes a trained AttentionNet's ranked maps give under each box rule (book/open_choices.md,
choice 7): the baseline a map is normalised from (its minimum or its median) and the threshold.

For each rule: the median box side and its quartiles (shares of the image), the share of boxes
at the largest side allowed, the spread of the box centres over faces, and, on the drawn faces,
the share of each box on the true age regions beside the regions' share of the image.

    python benchmarks/box_rule.py CHECKPOINT [--data synthetic:3000] [--faces 300]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adpf.checkpoint import load_model  # noqa: E402
from adpf.data.prepared import PreparedFaces  # noqa: E402
from adpf.evaluate import attention_maps, attention_net_of, box_region_share, box_statistics  # noqa: E402
from adpf.patches import maps_to_boxes  # noqa: E402
from recipe_curves import data_and_split  # noqa: E402  (beside this script)

RULES = [("min", "mean"), ("min", 0.5), ("min", 0.7), ("min", 0.8),
         ("median", 0.3), ("median", 0.5), ("median", 0.7)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="synthetic:3000")
    p.add_argument("--faces", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(1)
    data, split = data_and_split(args.data)
    faces = PreparedFaces(data, split.test[:args.faces])
    images = torch.stack([faces[i]["image"] for i in range(len(faces))])
    model = load_model(args.checkpoint)
    config = attention_net_of(model).config
    ranked = attention_maps(model, images).ranked
    regions = torch.as_tensor(np.asarray(data.masks[split.test[:args.faces]])).any(dim=1) if data.masks is not None \
        else None
    print(f"{args.checkpoint}: {len(images)} test faces, {config.heads} heads"
          + (f", true regions {float(regions.float().mean()):.1%} of the image" if regions is not None else ""))
    print("| baseline | threshold | median side | quartiles | at the largest side | centre spread | on the regions |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for baseline, threshold in RULES:
        boxes = maps_to_boxes(ranked, config.image_size, threshold, config.patch_min_frac, config.patch_max_frac,
                              baseline=baseline)
        s = box_statistics(boxes, config)
        share = f"{float(box_region_share(boxes, regions).mean()):.1%}" if regions is not None else "—"
        q1, q3 = s["box_side_quartiles"]
        print(f"| {baseline} | {threshold} | {s['box_side_median']:.2f} | {q1:.2f}–{q3:.2f} | {s['box_at_clamp']:.0%} "
              f"| {s['box_centre_spread']:.3f} | {share} |")


if __name__ == "__main__":
    main()
