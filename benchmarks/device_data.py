"""Carry a prepared folder to a machine that cannot read ``../shared`` (the lent GPU machine), and back.

The device tool carries at most 64 MiB of the working tree, and a prepared folder's
``images.npy`` does not compress losslessly (9,690 UTKFace faces at 64 px: 115 MB raw, 115 MB
with zstd). ``pack`` stores every face as a JPEG (quality 95) in one ``.npz`` beside the
folder's ``meta.csv`` and ``info.json``; ``unpack`` decodes them into a prepared folder again,
with ``info.json`` saying it was carried this way. The faces then differ from the originals by
the JPEG error (``pack`` prints its mean absolute value, in grey levels).

    python benchmarks/device_data.py pack data/utkface-64 carry/utkface-64.npz
    python benchmarks/device_data.py unpack carry/utkface-64.npz data/utkface-64
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adpf.data.prepared import load_prepared, write_prepared  # noqa: E402

QUALITY = 95


def pack(folder: Path, out: Path) -> None:
    data = load_prepared(folder)
    blobs, error = [], 0.0
    for image in data.images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image)).save(buffer, format="JPEG", quality=QUALITY)
        blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        error += np.abs(np.asarray(Image.open(buffer), dtype=np.float64) - image).mean()
    sizes = np.array([len(b) for b in blobs], dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, jpeg=np.concatenate(blobs), sizes=sizes,
             meta=np.frombuffer(data.meta.to_csv(index=False).encode(), dtype=np.uint8),
             info=np.frombuffer(json.dumps(data.info).encode(), dtype=np.uint8))
    print(f"{folder}: {len(sizes)} faces -> {out} ({out.stat().st_size / 2 ** 20:.1f} MiB), "
          f"mean JPEG error {error / len(sizes):.2f} grey levels")


def unpack(packed: Path, folder: Path) -> None:
    blob = np.load(packed)
    ends = np.cumsum(blob["sizes"])
    jpeg = blob["jpeg"]
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[end - size:end].tobytes())).convert("RGB"))
                       for end, size in zip(ends, blob["sizes"])])
    meta = pd.read_csv(io.BytesIO(blob["meta"].tobytes()))
    info = json.loads(blob["info"].tobytes())
    name = info.pop("name")
    for key in ("format", "version", "image_size", "count", "subjects", "age_min", "age_max"):
        info.pop(key, None)
    info["carried"] = f"JPEG quality {QUALITY} by benchmarks/device_data.py"
    write_prepared(folder, images, meta, name=name, info=info)
    print(f"{packed}: {len(images)} faces -> {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.target)


if __name__ == "__main__":
    main()
