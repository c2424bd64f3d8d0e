#!/usr/bin/env python
"""Prepare MORPH II (album 2: 55,000+ images of 13,000+ people, ages 16-77) for adpf.

Expected layout (folder or archive):
    any folders of images named NNNNNN_NNGAA.JPG, e.g. 000001_0M17.JPG
        (subject 000001, image 0, gender M, age 17)
    and, for race labels (Settings II and III), the album-2 CSV given with --csv:
        columns id_num, age, photo (path or file name of the image), gender (M/F), race (B/W/A/H/O)

MORPH II is licensed by UNC Wilmington (https://uncw.edu/oic/tech/morph.html); it cannot be
downloaded here. The faces are aligned with dlib unless --no-align.
Protocols: adpf.data.protocols.morph_setting1 / morph_setting2 / morph_setting3.

Example:  python data_scripts/morph2.py MORPH_Album2.zip --csv MORPH_Album2_Commercial.csv
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from adpf.data.readers import read_morph2  # noqa: E402
from adpf.data.scripts_common import common_parser, run  # noqa: E402


def main(argv=None) -> int:
    parser = common_parser(__doc__, "morph2")
    parser.add_argument("--csv", type=Path, help="the album-2 label CSV (else labels come from the file names, without race)")
    args = parser.parse_args(argv)
    return run(args, lambda root: read_morph2(root, args.csv), "MORPH II")


if __name__ == "__main__":
    sys.exit(main())
