#!/usr/bin/env python
"""Prepare FG-NET (1,002 images of 82 people, ages 0-69) for adpf.

Expected layout (folder or .zip/.tar archive, any nesting):
    images/001A02.JPG, 001A05.JPG, ...   NNNAaa[a-z].JPG: subject NNN, age aa
    points/001a02.pts, ...               optional 68-point landmarks (kept in meta.csv)

FG-NET has no stable official download; get the archive from its maintainers or a mirror
you trust and pass it here. The faces are aligned with dlib unless --no-align.
Protocol: leave one person out (adpf.data.protocols.leave_one_person_out).

Example:  python data_scripts/fgnet.py FGNET.zip --size 128
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.readers import read_fgnet  # noqa: E402
from adpf.data.scripts_common import common_parser, run  # noqa: E402


def main(argv=None) -> int:
    args = common_parser(__doc__, "fgnet").parse_args(argv)
    return run(args, read_fgnet, "FG-NET")


if __name__ == "__main__":
    sys.exit(main())
