#!/usr/bin/env python
"""Prepare any folder of face images labelled by a CSV for adpf.

Expected layout:
    SOURCE/...images...                      (folder or archive)
    --csv labels.csv with columns path, age[, subject, ...]
        path relative to SOURCE; without subject each image is its own subject;
        other columns are kept in meta.csv

The faces are aligned with dlib unless --no-align. Rows whose file is missing or whose age
is not a number are listed and skipped.

Example:  python data_scripts/folder.py my_faces/ --csv my_faces/labels.csv --size 128
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.readers import read_folder  # noqa: E402
from adpf.data.scripts_common import common_parser, run  # noqa: E402


def main(argv=None) -> int:
    parser = common_parser(__doc__, "folder")
    parser.add_argument("--csv", type=Path, required=True, help="labels: path, age[, subject]")
    args = parser.parse_args(argv)
    return run(args, lambda root: read_folder(root, args.csv), "folder")


if __name__ == "__main__":
    sys.exit(main())
