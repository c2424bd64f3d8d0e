"""Two CPU processes (gloo) train ADPF under DistributedDataParallel: both stages run, the ranks end
with identical weights, and only rank 0 writes the checkpoint and the result."""
import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from adpf.checkpoint import load_checkpoint
from adpf.config import get_preset
from adpf.data.prepared import write_prepared
from adpf.recipes import Recipe

TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)
RECIPE = Recipe(attention_epochs=1, fusion_epochs=1, batch_size=8, lr=0.05, device="cpu")
SPLIT = {"train": np.arange(0, 32), "val": np.arange(32, 36), "test": np.arange(36, 40)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, root: str, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ADPF_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from adpf.train import train

    final = {}
    result = train(get_preset("cpu", **TINY), root, SPLIT, RECIPE, progress=False,
                   callback=lambda stage, row, model: final.update(weights=model.state_dict()))
    torch.save({"mae": result.mae, "history": result.history, "world": result.hardware["world_size"],
                "files": sorted(os.listdir(os.path.dirname(result.checkpoint))), "weights": final["weights"],
                "checkpoint": load_checkpoint(result.checkpoint)["model"] if rank == 0 else None},
               os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 40).astype(float), "subject": np.arange(40) // 2})
    return write_prepared(tmp_path / "tiny", images, meta, name="tiny")


def test_two_gloo_processes_agree(data, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    mp.start_processes(worker, args=(2, free_port(), str(data), str(cache), str(out)), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # the ranks end with identical weights (and BatchNorm statistics), which rank 0 wrote
    assert r0["weights"].keys() == r1["weights"].keys() == r0["checkpoint"].keys()
    for k, v in r0["weights"].items():
        assert torch.equal(v, r1["weights"][k]) and torch.equal(v, r0["checkpoint"][k]), k
    assert len(r0["history"]["attention"]) == len(r0["history"]["fusion"]) == 1
    # every rank evaluates the same (synchronised) weights, so the metrics agree exactly
    assert r0["mae"] == r1["mae"]
    assert [r["val_mae"] for r in r0["history"]["fusion"]] == [r["val_mae"] for r in r1["history"]["fusion"]]
    # each rank saw half of every batch: 32 training images, global batch 8 -> 4 steps per epoch
    assert r0["history"]["attention"][0]["images_per_s"] > 0
    assert {"checkpoint.pt", "stage.json", "result.json"} <= set(r0["files"])
    runs = list((cache / "runs").iterdir())
    assert sorted(p.name.split("-")[0] for p in runs) == ["attention", "fusion"]
    assert not [p for p in (cache / "runs").rglob("*.tmp")]
    assert any(k.startswith("fusion_net.") for k in r0["checkpoint"])
