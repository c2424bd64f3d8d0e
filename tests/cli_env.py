"""What the command-line tests share: a tiny config and a tiny prepared set with the environment
a subprocess of ``python -m adpf.cli`` runs in (this checkout, its own cache, one thread)."""
import os
from pathlib import Path

import numpy as np
import pandas as pd

from adpf.data.prepared import write_prepared

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "image_size=16", "--set", "x_size=4", "--set", "stem_channels=[4,4,4]", "--set", "x_channels=6",
        "--set", "heads=3", "--set", "key_channels=4", "--set", "value_channels=4", "--set", "ca_reduction=2",
        "--set", "fusion_channels=[4,6,8]", "--set", "patch_size=8", "--set", "patch_channels=3",
        "--set", "age_max=9"]


def tiny_env(root: Path, info: dict | None = None) -> dict:
    """60 random 16×16 faces of 20 people (ages 0–9) at ``root/tiny`` and the subprocess environment."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 60).astype(float), "subject": np.arange(60) // 3})
    data = write_prepared(root / "tiny", images, meta, name="tiny", info=info)
    variables = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                 "ADPF_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    return {"root": root, "data": data, "env": variables}
