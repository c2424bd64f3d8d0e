#!/usr/bin/env python
"""Draw the embedded synthetic aging faces (adpf.data.synthetic) into a prepared folder.

Each face shows its age only in four masked regions (crow's feet, under the eyes,
forehead, laugh lines); the masks are stored in masks.npy. The same arguments always give
the same faces. adpf.data.prepared.default_dataset does this once into the cache by itself.

Example:  python data_scripts/synthetic.py --n 10000 --size 64
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.prepared import load_prepared, write_synthetic_prepared  # noqa: E402
from adpf.data.scripts_common import UsageError, check_counts, check_output  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="number of faces")
    p.add_argument("--size", type=int, default=128, help="side of the square faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output folder (default data/synthetic-SIZE)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that adpf prepared earlier (any other folder is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when not on a terminal)")
    args = p.parse_args(argv)
    out = args.out or Path("data") / f"synthetic-{args.size}"
    try:
        check_counts(args, "n", "size")
        check_output(out, args.overwrite)
    except (UsageError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    write_synthetic_prepared(out, args.n, args.size, args.seed, overwrite=args.overwrite, progress=not args.quiet)
    seconds = time.perf_counter() - start
    info = load_prepared(out).info
    print(f"wrote {out}: {info['count']} faces {args.size}x{args.size}, {info['subjects']} subjects, "
          f"ages {info['age_min']:g}..{info['age_max']:g}, regions {', '.join(info['region_names'])}")
    print(f"time: {seconds:.1f} s ({args.n / seconds:.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
