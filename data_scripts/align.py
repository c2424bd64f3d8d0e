#!/usr/bin/env python
"""Align every image under a folder with dlib into square PNG crops (no labels needed).

Finds the largest face, fits dlib's 68 landmarks, puts the eye centres at fixed places
(adpf.data.align.EYE_POSITIONS) and crops to --size. Resumable: crops already in OUT are
kept. Prints how many were aligned, had no face or could not be read, which photos hold
several faces and which alignments look doubtful (adpf.data.align.alignment_doubts).
Beyond the photo's edge the crops are mirrored (adpf.data.align.FILL). OUT may not be
inside SOURCE (its crops would be read as sources next time).

Example:  python data_scripts/align.py photos/ --out data/aligned-photos --size 128
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.align import align_batch  # noqa: E402
from adpf.data.readers import IMAGE_SUFFIXES  # noqa: E402
from adpf.data.align import AlignerMissingError  # noqa: E402
from adpf.data.scripts_common import UsageError, check_counts, check_paths  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="folder for the aligned PNG crops")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source}: not a folder of images", file=sys.stderr)
        return 2
    try:  # OUT inside SOURCE would be read as sources on the next run
        check_counts(args, "size", "workers")
        check_paths(args.source, args.out, out_inside_source=False)
    except (UsageError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    paths = sorted(q for q in args.source.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
    if not paths:
        print(f"error: {args.source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        print(align_batch(paths, args.out, args.size, args.workers))
    except AlignerMissingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
