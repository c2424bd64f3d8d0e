#!/usr/bin/env python
"""Prepare UTKFace (20,000+ faces, ages 0-116) for adpf.

Expected layout (folder or archive, e.g. UTKFace.tar.gz or crop_part1.tar.gz from
https://susanqq.github.io/UTKFace/):
    25_0_1_20170116174525125.jpg.chip.jpg, ...   age_gender_race_datetime.jpg[.chip.jpg]

The few malformed names are listed and skipped. UTKFace has no identity labels: each image
is its own subject. The "Aligned&Cropped" faces come aligned: use --no-align to only crop
square and resize them (the wild images need dlib alignment).

Example:  python data_scripts/utkface.py UTKFace/ --no-align --size 64
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.readers import read_utkface  # noqa: E402
from adpf.data.scripts_common import common_parser, run  # noqa: E402


def main(argv=None) -> int:
    args = common_parser(__doc__, "utkface").parse_args(argv)
    return run(args, read_utkface, "UTKFace")


if __name__ == "__main__":
    sys.exit(main())
