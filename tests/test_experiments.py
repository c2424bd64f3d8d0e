"""The ablation table (Table VII), the heads sweep (Table IX) and protocol runs, on tiny data."""
import numpy as np
import pandas as pd
import pytest

from adpf.config import get_preset
from adpf.data.prepared import load_prepared, write_prepared
from adpf.data.protocols import kfold_subjects
from adpf.experiments import ABLATIONS, ablation_table, heads_table, mean_std, run_protocol
from adpf.networks import build_model, count_parameters
from adpf.train import Recipe

TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)
RECIPE = Recipe(attention_epochs=1, fusion_epochs=1, batch_size=8, lr=0.05, device="cpu")
SPLIT = {"train": np.arange(0, 30), "val": np.arange(30, 30), "test": np.arange(30, 40)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 40).astype(float), "subject": np.arange(40) // 2})
    masks = np.zeros((40, 1, 16, 16), dtype=bool)
    masks[:, 0, 2:6, 3:13] = True
    return load_prepared(write_prepared(tmp_path_factory.mktemp("d") / "tiny", images, meta, name="tiny",
                                        masks=masks, region_names=("band",)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_ablation_table_trains_each_shared_stage_once(data, cache):
    table = ablation_table(get_preset("cpu", **TINY), data, SPLIT, RECIPE, attention=True, progress=False)
    assert table["model"].tolist() == list(ABLATIONS)
    assert table["variant"].tolist() == ["adpf"] * 4 + ["attention_only", "plain_cnn", "fixed_patches"]
    # stage 1 for ADPF (shared by w/o ranking and AttentionNet alone), w/SA and w/o diversity;
    # stage 2 for the four ADPF rows; one stage for each baseline
    stages = sorted(p.name.split("-")[0] for p in (cache / "runs").iterdir())
    assert stages == ["attention"] * 3 + ["fusion"] * 4 + ["single"] * 2
    for _, row in table.iterrows():
        config = get_preset("cpu", **{**TINY, **ABLATIONS[row["model"]]})
        assert row["parameters"] == count_parameters(build_model(config))
        assert 0 <= row["cs5"] <= 1 and row["mae"] >= 0 and not row["cached"]
    attention = table[table["variant"].isin(["adpf", "attention_only"])]
    assert attention[["head_overlap", "region_share", "region_share_p1"]].apply(lambda c: c.between(0, 1)).all().all()
    assert np.allclose(attention["region_area"], 4 * 10 / 256)
    assert table.loc[table["variant"] == "plain_cnn", "head_overlap"].isna().all()
    again = ablation_table(get_preset("cpu", **TINY), data, SPLIT, RECIPE, progress=False)
    assert again["cached"].all() and np.array_equal(again["mae"], table["mae"])


def test_heads_table_changes_only_the_heads(data, cache):
    changes = {k: v for k, v in TINY.items() if k not in ("heads", "x_channels", "fusion_channels")}
    table = heads_table(data, SPLIT, RECIPE, heads=(2, 3), progress=False, **changes)
    assert table["heads"].tolist() == [2, 3] and table["model"].tolist() == ["ADPF, 2 heads", "ADPF, 3 heads"]
    assert table["parameters"].iloc[0] < table["parameters"].iloc[1]


def test_protocol_runs_every_split_and_aggregates(data, cache):
    splits = kfold_subjects(data.meta, k=2, seed=0)
    table = run_protocol(get_preset("cpu", variant="plain_cnn", **TINY), data, splits, RECIPE, progress=False)
    assert table["split"].tolist() == [s.name for s in splits]
    assert table["train"].tolist() == [len(s.train) for s in splits]
    summary = mean_std(table)
    assert summary.loc["mean", "mae"] == pytest.approx(table["mae"].mean())
    assert summary.loc["std", "mae"] == pytest.approx(np.std(table["mae"], ddof=1))
    with pytest.raises(KeyError, match="unknown ablation"):
        ablation_table(get_preset("cpu", **TINY), data, SPLIT, RECIPE, rows=["nope"], progress=False)
