#!/usr/bin/env python
"""Prepare All-Age-Faces (AAF) photos for adpf, and measure dlib's alignment on them.

Expected layout (folder or archive):
    images/00028A02.jpg, ...      NNNNNAaa.jpg: serial NNNNN (one photo per person), age aa;
                                  serials from 07381 on are men
    keypoints/00028A02.txt, ...   optional: 49 "x y" lines (the 68-point scheme without the
                                  jaw line and the inner mouth corners)

With keypoints and --measure, also prints dlib's detection rate and its eye error against
the keypoints (eye-centre distance over the inter-ocular distance).

Example:  python data_scripts/aaf.py All-Age-Faces/ --size 64 --measure
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.align import read_keypoints_49  # noqa: E402
from adpf.data.readers import read_aaf  # noqa: E402
from adpf.data.scripts_common import common_parser, run_and_measure  # noqa: E402


def main(argv=None) -> int:
    parser = common_parser(__doc__, "aaf")
    parser.add_argument("--measure", action="store_true", help="report detection rate and eye error against keypoints/")
    args = parser.parse_args(argv)
    return run_and_measure(args, read_aaf, "AAF", "keypoints", read_keypoints_49, "aaf49", "keypoints/NNNNNAaa.txt")


if __name__ == "__main__":
    sys.exit(main())
