"""How spread each attention head of a record's AttentionNets is (`adpf.evaluate.head_entropy`).

A head whose self-attention (Eq. 1–3) weighs every pixel alike averages its values into a flat
map HA_k, and the box cut from a flat map is noise (book/open_choices.md, choice 18). For every
row of a record that has a stage 1 (ADPF, its ablations, AttentionNet alone), this reads the
trained AttentionNet from the cache (the rows' ``stage_keys``) and prints each head's entropy
over log N, 1 being uniform, averaged over the pixels and over ``--faces`` faces spread evenly
through the data (what is measured is the network, not its error, so training faces count)::

    python benchmarks/head_entropy.py benchmarks/results/longer-utkface.json --data data/utkface-64 \
        --out benchmarks/results/head-entropy-longer-utkface.json

Prints one line per trained AttentionNet (rows that share a stage 1 are named together), heads in
ranked order (P_1 first), and how many are within 1 % of uniform (entropy ≥ 0.99); ``--out``
writes the same as JSON (chapter 10 reads it).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch

from adpf.cache import code_version, stage_dir, write_json
from adpf.checkpoint import load_model
from adpf.data.prepared import default_dataset, images_to_tensor, load_prepared
from adpf.evaluate import attention_maps, head_entropy
from adpf.experiments import read_record

FLAT = 0.99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record")
    parser.add_argument("--data", required=True,
                        help="the prepared folder the record was trained on, or 'synthetic' for the drawn faces")
    parser.add_argument("--faces", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="also write the entropies as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    record = read_record(args.record)
    if args.data == "synthetic":  # the drawn faces of the record's size, as `adpf experiments --data synthetic` draws them
        args.data = str(default_dataset(image_size=record["data"]["image_size"], n=record["data"]["count"]))
    data = load_prepared(args.data)
    rows = [row for row in record["rows"] if "attention" in row["stage_keys"]]
    if not rows:
        raise SystemExit(f"{args.record}: no row has an AttentionNet (stage 1)")
    picked = np.linspace(0, len(data) - 1, min(args.faces, len(data))).round().astype(int)
    images = images_to_tensor(data.images[picked])
    print(f"{args.record}: {len(picked)} faces of {args.data}; head entropy / log N, P_1 first "
          f"(1 = uniform attention, a flat map)")
    networks: dict[str, dict] = {}
    for row in rows:
        key = row["stage_keys"]["attention"]
        if key in networks:
            networks[key]["models"].append(row["model"])
            continue
        path = stage_dir("attention", key) / "checkpoint.pt"
        if not path.is_file():
            print(f"{row['model']} seed {row['seed']}: {path} is not in the cache; train it with the record's "
                  "command", file=sys.stderr)
            continue
        model = load_model(path)
        order = attention_maps(model, images[:1]).order.cpu()
        entropy = torch.cat([head_entropy(model, batch) for batch in images.split(args.batch_size)])
        networks[key] = {"models": [row["model"]], "seed": row["seed"], "stage_key": key,
                         "head_entropy": entropy.mean(dim=0)[order].tolist()}
    for found in networks.values():
        ranked = found["head_entropy"]
        found["flat_heads"] = sum(e >= FLAT for e in ranked)
        print(f"{' and '.join(found['models'])}, seed {found['seed']}: " + " ".join(f"{e:.3f}" for e in ranked)
              + f"   flat heads {found['flat_heads']} of {len(ranked)}", flush=True)
    if args.out:
        write_json(args.out, {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
                              "record": args.record, "data": record["data"], "faces": len(picked),
                              "flat_threshold": FLAT, "code_version": code_version(),
                              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "networks": list(networks.values())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
