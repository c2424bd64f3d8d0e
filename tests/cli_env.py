"""What the command-line tests share: a tiny config and a tiny prepared set with the environment
a subprocess of ``python -m adpf.cli`` runs in (this checkout, its own cache, one thread)."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adpf.checkpoint import save_checkpoint
from adpf.config import get_preset
from adpf.data.prepared import write_prepared
from adpf.networks import build_model

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


TINY_CONFIG = get_preset("cpu", image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3,
                         key_channels=4, value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8,
                         patch_channels=3, age_max=9)


def tiny_checkpoint(path, config=TINY_CONFIG, **state):
    """An untrained network of ``config`` saved as a checkpoint (enough for the checks before the work)."""
    torch.manual_seed(0)
    return save_checkpoint({"config": config.to_dict(), "model": build_model(config).state_dict(), **state}, path)


