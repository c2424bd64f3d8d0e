#!/usr/bin/env python
"""Prepare FG-NET (1,002 images of 82 people, ages 0-69) for adpf, and measure dlib's alignment on it.

Expected layout (folder or .zip/.tar archive, any nesting):
    images/001A02.JPG, 001A05.JPG, ...   NNNAaa[a-z].JPG: subject NNN, age aa
    points/001a02.pts, ...               optional 68-point landmarks (kept in meta.csv)

FG-NET's 68 points are not in dlib's order: its eyes are points 27-30 and 32-35 (0-based).
With the points and --measure, also prints dlib's detection rate and its eye error against
them (eye-centre distance over the inter-ocular distance).

FG-NET has no stable official download; get the archive from its maintainers or a mirror
you trust and pass it here. The faces are aligned with dlib unless --no-align.
Protocol: leave one person out (adpf.data.protocols.leave_one_person_out).

Example:  python data_scripts/fgnet.py FGNET.zip --size 128 --measure
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.readers import read_fgnet, read_pts  # noqa: E402
from adpf.data.scripts_common import common_parser, run_and_measure  # noqa: E402


def main(argv=None) -> int:
    parser = common_parser(__doc__, "fgnet")
    parser.add_argument("--measure", action="store_true", help="report detection rate and eye error against points/")
    args = parser.parse_args(argv)
    return run_and_measure(args, read_fgnet, "FG-NET", "pts", read_pts, "fgnet68", "points/NNNaNN.pts")


if __name__ == "__main__":
    sys.exit(main())
