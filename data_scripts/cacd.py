#!/usr/bin/env python
"""Prepare CACD2000 (160,000+ images of 2,000 celebrities, ages 16-62) for adpf.

Expected layout (folder or archive, e.g. CACD2000.tar.gz from
https://bcsiriuschen.github.io/CARC/):
    CACD2000/53_Robin_Williams_0001.jpg, ...   AA_First_Last_NNNN.jpg: age AA, celebrity First_Last
    --meta celebrity2000_meta.mat (or a CSV with columns name, rank, ...), optional

The project does not download it (no published checksum to verify). The faces are aligned
with dlib unless --no-align. Protocol: 1,800 / 120 / 80 celebrities for train / val / test
(adpf.data.protocols.cacd_split).

Example:  python data_scripts/cacd.py CACD2000.tar.gz --meta celebrity2000_meta.mat
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.readers import read_cacd  # noqa: E402
from adpf.data.scripts_common import common_parser, run  # noqa: E402


def main(argv=None) -> int:
    parser = common_parser(__doc__, "cacd")
    parser.add_argument("--meta", type=Path, help="celebrity2000_meta.mat or a CSV with a 'name' column")
    args = parser.parse_args(argv)
    return run(args, lambda root: read_cacd(root, args.meta), "CACD")


if __name__ == "__main__":
    sys.exit(main())
