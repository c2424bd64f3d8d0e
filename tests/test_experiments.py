"""The ablation table (Table VII), the heads sweep (Table IX), protocol runs, records over seeds
and the statistics that read them, on tiny data."""
import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import adpf.experiments as experiments
from adpf.cli import main
from adpf.config import ADPFConfig, get_preset
from adpf.data.prepared import load_prepared, write_prepared
from adpf.data.protocols import kfold_subjects
from adpf.experiments import (ABLATIONS, CLAIMS, DEFAULT_ROWS, ablation_table, book_records, check_claims, heads_table,
                              late_gain, learning_curves, stage_ends, mean_pm_std, mean_std, read_record, record_notes, record_rows,
                              records_overview, run_command, run_protocol, seed_summary, seed_table, verdict)
from adpf.networks import build_model, count_parameters
from adpf.recipes import Recipe

TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}")]
RECIPE = Recipe(attention_epochs=1, fusion_epochs=1, batch_size=8, lr=0.05, device="cpu")
SPLIT = {"train": np.arange(0, 30), "val": np.arange(30, 30), "test": np.arange(30, 40)}
# subjects are row // 2: nobody on two sides
VAL_SPLIT = {"train": np.arange(0, 26), "val": np.arange(26, 32), "test": np.arange(32, 40)}
ROOT = Path(__file__).resolve().parents[1]
ROWS = ("ADPF", "ADPF w/o diversity loss", "plain CNN")


def tiny_data(root, seed=0, n=40):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, n).astype(float), "subject": np.arange(n) // 2})
    masks = np.zeros((n, 1, 16, 16), dtype=bool)
    masks[:, 0, 2:6, 3:13] = True
    return load_prepared(write_prepared(root, images, meta, name="tiny", masks=masks, region_names=("band",)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("d") / "tiny")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def trainings(monkeypatch):
    """Counts the trainings `measure` asks for (each is still trained or loaded by `train`)."""
    calls = []
    real = experiments.train

    def counted(config, data, split, recipe, **kw):
        calls.append((config.variant, config.diversity_weight, recipe.seed))
        return real(config, data, split, recipe, **kw)

    monkeypatch.setattr(experiments, "train", counted)
    return calls


def test_ablation_table_trains_each_shared_stage_once(data, cache):
    table = ablation_table(get_preset("cpu", **TINY), data, SPLIT, RECIPE, attention=True, progress=False)
    assert table["model"].tolist() == list(DEFAULT_ROWS) == list(ABLATIONS)[:-1]  # placed boxes by name only
    assert table["variant"].tolist() == ["adpf"] * 4 + ["attention_only", "plain_cnn", "fixed_patches",
                                                        "resnet18"]
    # stage 1 for ADPF (shared by w/o ranking and AttentionNet alone), w/SA and w/o diversity;
    # stage 2 for the four ADPF rows; one stage for each baseline and the reference network
    stages = sorted(p.name.split("-")[0] for p in (cache / "runs").iterdir())
    assert stages == ["attention"] * 3 + ["fusion"] * 4 + ["single"] * 3
    for _, row in table.iterrows():
        config = get_preset("cpu", **{**TINY, **ABLATIONS[row["model"]]})
        assert row["parameters"] == count_parameters(build_model(config))
        assert 0 <= row["cs5"] <= 1 and row["mae"] >= 0 and not row["cached"]
        assert np.isnan(row["val_mae"]) and row["seed"] == RECIPE.seed
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


def test_seeds_train_every_row_once_per_seed_and_seed_0_is_the_single_run(data, cache):
    base = get_preset("cpu", **TINY)
    table = ablation_table(base, data, VAL_SPLIT, RECIPE, rows=ROWS, seeds=[0, 1], progress=False)
    # seed after seed: a record stopped early holds whole tables
    assert list(zip(table["model"], table["seed"])) == [(m, s) for s in (0, 1) for m in ROWS]
    single = ablation_table(base, data, VAL_SPLIT, RECIPE, rows=ROWS, progress=False)
    assert single["cached"].all()
    assert np.array_equal(single["mae"], table.loc[table["seed"] == 0, "mae"])
    # another seed is another training (other initial weights and shuffling)
    assert not np.array_equal(table.loc[table["seed"] == 0, "mae"], table.loc[table["seed"] == 1, "mae"])
    assert table["val_mae"].between(0, 10).all()
    # the learning curves: one validation MAE per epoch of every stage
    stages = {"ADPF": ["attention", "fusion"], "plain CNN": ["single"]}
    for _, row in table[table["model"].isin(stages)].iterrows():
        assert list(row["history"]) == stages[row["model"]]
        assert all(len(epochs) == 1 and epochs[0]["epoch"] == 1 and epochs[0]["val_mae"] >= 0
                   for epochs in row["history"].values())


def test_a_record_holds_its_provenance_and_every_row(data, cache, tmp_path):
    path = tmp_path / "results" / "ablation.json"
    table = ablation_table(get_preset("cpu", **TINY), data, VAL_SPLIT, RECIPE, rows=ROWS, attention=True,
                           seeds=[0, 1], record=path, command="adpf experiments ablation --seeds 0 1",
                           progress=False)
    record = read_record(path, kind="ablation")
    assert record["command"] == "adpf experiments ablation --seeds 0 1"
    assert record["code_version"] == experiments.code_version() and experiments.is_current(record)
    assert record["data"]["count"] == 40 and record["data"]["image_size"] == 16 and record["data"]["name"] == "tiny"
    assert record["split"]["sizes"] == {"train": 26, "val": 6, "test": 8}
    assert record["recipe"]["attention_epochs"] == 1 and record["recipe"]["seed"] == "per row"
    assert ADPFConfig.from_dict(record["config"]) == get_preset("cpu", **TINY)
    assert record["models"] == list(ROWS) and record["seeds"] == [0, 1]
    assert "cpu_count" in record["hardware"] and record["versions"]["code"] == record["code_version"]
    # the constant answer, against a float64 loop
    ages = data.meta["age"].tolist()
    mean = sum(ages[i] for i in range(26)) / 26
    assert record["constant"]["train_mean_age"] == pytest.approx(mean, abs=1e-12)
    assert record["constant"]["mae"] == pytest.approx(sum(abs(ages[i] - mean) for i in range(32, 40)) / 8, abs=1e-12)
    rows = record_rows(record)
    # the record's rows in the order of its models, then seeds (the table was trained seed after seed)
    assert list(zip(rows["model"], rows["seed"])) == [(m, s) for m in ROWS for s in (0, 1)]
    by_row = table.set_index(["model", "seed"]).loc[list(zip(rows["model"], rows["seed"]))]
    assert np.array_equal(rows["mae"], by_row["mae"]) and np.array_equal(rows["val_mae"], by_row["val_mae"])
    assert rows.loc[rows["model"] != "plain CNN", "head_overlap"].between(0, 1).all()
    assert rows.loc[rows["model"] == "plain CNN", "head_overlap"].isna().all()
    curves = learning_curves(record)
    assert len(curves) == 2 * (2 + 2 + 1) and set(curves["stage"]) == {"attention", "fusion", "single"}
    # one epoch a stage: nothing to gain from
    assert late_gain(curves)["gain"].isna().all()


def test_a_row_of_placed_boxes_records_them_and_its_boxes_hold_still(data, cache, tmp_path):
    """The row 'ADPF (placed boxes)' (patch_placement="rank_median") shares ADPF's stage 1, holds
    the placed boxes of its checkpoint, and its box statistics are theirs (the same for every face)."""
    from adpf.cache import stage_dir
    from adpf.checkpoint import load_model

    path = tmp_path / "placed.json"
    table = ablation_table(get_preset("cpu", **TINY), data, VAL_SPLIT, RECIPE, rows=["ADPF", "ADPF (placed boxes)"],
                           attention=True, record=path, command="adpf experiments ablation", progress=False)
    assert sorted(p.name.split("-")[0] for p in (cache / "runs").iterdir()) == ["attention", "fusion", "fusion"]
    rows = record_rows(read_record(path, kind="ablation")).set_index("model")
    keys = table.set_index("model")["stage_keys"]
    placed = load_model(stage_dir("fusion", keys["ADPF (placed boxes)"]["fusion"]) / "checkpoint.pt").placed_boxes
    assert rows.loc["ADPF (placed boxes)", "placed_boxes"] == placed.tolist()
    assert rows.loc["ADPF (placed boxes)", "box_centre_spread"] == 0 < rows.loc["ADPF", "box_centre_spread"]
    assert rows.loc["ADPF (placed boxes)", "box_side_median_by_rank"] == pytest.approx(
        ((placed[:, 2] - placed[:, 0]) / 16).tolist())
    assert not isinstance(rows.loc["ADPF", "placed_boxes"], list)


def test_head_entropy_script_measures_each_stage_one_of_a_record_once(data, cache, tmp_path):
    """benchmarks/head_entropy.py: rows that share a stage 1 are one network; its entropies are
    `head_entropy` on the faces it picks, heads in ranked order, and the record rows carry theirs."""
    import importlib.util

    from adpf.cache import stage_dir
    from adpf.checkpoint import load_model
    from adpf.data.prepared import images_to_tensor
    from adpf.evaluate import attention_maps, head_entropy
    path = tmp_path / "ablation.json"
    ablation_table(get_preset("cpu", **TINY), data, VAL_SPLIT, RECIPE, rows=("ADPF", "AttentionNet alone", "plain CNN"),
                   attention=True, seeds=[0], record=path, command="adpf experiments ablation", progress=False)
    rows = record_rows(read_record(path))
    attention_rows = rows[rows["model"] != "plain CNN"]
    assert all(len(e) == 3 and all(0 < v <= 1 for v in e) for e in attention_rows["head_entropy"])
    spec = importlib.util.spec_from_file_location("head_entropy_script", ROOT / "benchmarks" / "head_entropy.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "entropy.json"
    assert script.main([str(path), "--data", str(data.root), "--faces", "10", "--out", str(out)]) == 0
    found = json.loads(out.read_text())
    assert len(found["networks"]) == 1 and found["networks"][0]["models"] == ["ADPF", "AttentionNet alone"]
    model = load_model(stage_dir("attention", found["networks"][0]["stage_key"]) / "checkpoint.pt")
    images = images_to_tensor(data.images[np.linspace(0, len(data) - 1, 10).round().astype(int)])
    expected = head_entropy(model, images).mean(dim=0)[attention_maps(model, images).order]
    assert np.allclose(found["networks"][0]["head_entropy"], expected.numpy(), atol=1e-6)
    assert found["networks"][0]["flat_heads"] == int((expected >= 0.99).sum())


def test_late_gain_is_the_last_stages_fall_over_its_last_epochs():
    history = {("a", 0): {"attention": [9.0, 5.0, 4.0], "fusion": [8.0, 6.0, 5.5, 5.25]},
               ("a", 1): {"attention": [9.0, 7.0, 6.0], "fusion": [7.0, 7.5, 7.0, 7.5]},
               ("b", 0): {"single": [10.0, 9.0]}}
    record = {"rows": [{"model": m, "seed": s, "history": {stage: [{"epoch": e + 1, "val_mae": v}
                                                                  for e, v in enumerate(values)]
                                                           for stage, values in h.items()}}
                       for (m, s), h in history.items()]}
    curves = learning_curves(record)
    for epochs in (1, 2, 3):
        gains = late_gain(curves, epochs).set_index(["model", "seed"])["gain"]
        for key, h in history.items():
            last = list(h.values())[-1]
            expected = last[-epochs - 1] - last[-1] if len(last) > epochs else None
            if expected is None:
                assert np.isnan(gains[key])
            else:
                assert gains[key] == pytest.approx(expected, abs=1e-12)


def test_stage_ends_are_each_stages_last_epoch_and_each_models_last_stage():
    history = {("a", 0): {"attention": [9.0, 5.0, 4.0], "fusion": [8.0, 6.0, 5.5, 5.25]},
               ("a", 1): {"attention": [9.0, 7.0, 6.5], "fusion": [7.0, 7.5]},
               ("b", 0): {"single": [10.0, 9.0]}}
    record = {"rows": [{"model": m, "seed": s, "history": {stage: [{"epoch": e + 1, "val_mae": v,
                                                                   "train_mae": v + 1}
                                                                  for e, v in enumerate(values)]
                                                           for stage, values in h.items()}}
                       for (m, s), h in history.items()]}
    curves = learning_curves(record)
    ends = stage_ends(curves)
    expected = [(m, s, stage, len(v), v[-1]) for (m, s), h in history.items() for stage, v in h.items()]
    assert list(zip(ends["model"], ends["seed"], ends["stage"], ends["epoch"], ends["val_mae"])) == expected
    assert (ends["train_mae"] == ends["val_mae"] + 1).all()
    # the last stage even where it has fewer epochs than the stage before it (a, 1)
    last = stage_ends(curves, last_stage=True)
    assert list(zip(last["model"], last["seed"], last["stage"], last["val_mae"])) == [
        ("a", 0, "fusion", 5.25), ("a", 1, "fusion", 7.5), ("b", 0, "single", 9.0)]


def test_a_record_resumes_its_finished_rows_and_restarts_for_other_code(data, cache, tmp_path, trainings,
                                                                         monkeypatch):
    path = tmp_path / "heads.json"
    changes = {k: v for k, v in TINY.items() if k not in ("heads", "x_channels", "fusion_channels")}
    run = dict(heads=(2, 3), seeds=[0, 1], record=path, progress=False, **changes)
    first = heads_table(data, VAL_SPLIT, RECIPE, **run)
    assert len(trainings) == 4
    # a stopped run: the record lost its last row, and the rerun trains only that one
    record = json.loads(path.read_text())
    record["rows"] = record["rows"][:-1]
    path.write_text(json.dumps(record))
    again = heads_table(data, VAL_SPLIT, RECIPE, **run)
    assert len(trainings) == 5 and trainings[-1][2] == 1
    assert np.array_equal(again["mae"], first["mae"])
    # a record of other code keeps none of its rows
    monkeypatch.setattr(experiments, "code_version", lambda: "0.0+other")
    heads_table(data, VAL_SPLIT, RECIPE, **run)
    assert len(trainings) == 9
    assert read_record(path)["code_version"] == "0.0+other"
    with pytest.raises(ValueError, match="expected 'ablation'"):
        read_record(path, kind="ablation")
    with pytest.raises(FileNotFoundError, match="no such record"):
        read_record(tmp_path / "none.json")


def test_testing_on_a_second_dataset(data, cache, tmp_path):
    other = tiny_data(tmp_path / "other", seed=5, n=12)
    path = tmp_path / "cross.json"
    table = ablation_table(get_preset("cpu", **TINY), data, VAL_SPLIT, RECIPE, rows=["plain CNN"], seeds=[0],
                           test_on=other, record=path, progress=False)
    from adpf.checkpoint import load_model
    from adpf.data.prepared import PreparedFaces
    from adpf.evaluate import predict
    from adpf.train import train
    from torch.utils.data import DataLoader

    result = train(get_preset("cpu", variant="plain_cnn", **TINY), data, VAL_SPLIT, RECIPE, progress=False)
    errors = predict(load_model(result.checkpoint), DataLoader(PreparedFaces(other), batch_size=5)).errors
    assert table["test_on_mae"].iloc[0] == pytest.approx(np.abs(errors).mean(), abs=1e-6)
    record = read_record(path)
    mean = data.meta["age"].to_numpy()[:26].mean()
    assert record["test_on"]["count"] == 12
    assert record["constant"]["test_on_mae"] == pytest.approx(np.abs(other.meta["age"].to_numpy() - mean).mean())


def test_seed_summary_is_the_mean_and_sample_std_per_model():
    rows = pd.DataFrame({"model": ["b", "a", "b", "a", "b"], "mae": [1.0, 4.0, 2.0, 6.0, 6.0],
                         "cs5": [0.1, 0.2, 0.3, 0.4, 0.5]})
    summary = seed_summary(rows)
    assert summary["model"].tolist() == ["b", "a"] and summary["seeds"].tolist() == [3, 2]
    for _, row in summary.iterrows():
        values = rows.loc[rows["model"] == row["model"], "mae"].tolist()
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        assert row["mae_mean"] == pytest.approx(mean, abs=1e-12) and row["mae_std"] == pytest.approx(std, abs=1e-12)
    assert mean_pm_std([1.0, 2.0, 6.0]) == "3.00 ± 2.65"


def test_verdict_is_a_tie_within_the_spread():
    # means 1 and 3, stds 1 and 1: the difference 2 equals the spread -> a tie
    assert verdict([0.0, 1.0, 2.0], [2.0, 3.0, 4.0]) == "tie"
    assert verdict([0.0, 1.0, 2.0], [2.1, 3.1, 4.1]) == "held"
    assert verdict([2.1, 3.1, 4.1], [0.0, 1.0, 2.0]) == "did not hold"
    # higher is better flips the direction
    assert verdict([2.1, 3.1, 4.1], [0.0, 1.0, 2.0], higher_is_better=True) == "held"
    # a small spread resolves a small difference, a large one does not
    assert verdict([1.0, 1.01], [1.1, 1.11]) == "held"
    assert verdict([1.0, 3.0], [1.5, 3.5]) == "tie"
    with pytest.raises(ValueError, match="at least 2 seeds"):
        verdict([1.0], [2.0, 3.0])


def claim_rows(means: dict, spread: float = 0.1, **columns) -> pd.DataFrame:
    """Three seeds per model at mean ± spread (seeds -1, 0, +1 times spread)."""
    rows = []
    for model, mean in means.items():
        for k in (-1, 0, 1):
            rows.append({"model": model, "seed": k + 1, "mae": mean + k * spread,
                         **{c: v[model] + k * spread / 10 for c, v in columns.items() if model in v}})
    return pd.DataFrame(rows)


def test_claims_read_the_rows():
    means = {"ADPF": 5.0, "ADPF w/SA": 6.0, "ADPF w/o ranking": 5.05, "ADPF w/o diversity loss": 4.0,
             "AttentionNet alone": 7.0, "plain CNN": 5.1, "fixed patches": 9.0}
    overlap = {"ADPF": 0.5, "ADPF w/o diversity loss": 0.8, "AttentionNet alone": 0.5, "ADPF w/SA": 0.5,
               "ADPF w/o ranking": 0.5}
    ablation = claim_rows(means, head_overlap=overlap)
    heads = claim_rows({"ADPF, 1 heads": 6.0, "ADPF, 3 heads": 4.0, "ADPF, 5 heads": 5.0})
    claims = check_claims(ablation, heads).set_index("claim")["verdict"]
    assert len(claims) == len(CLAIMS)
    assert claims["hybrid attention beats self-attention summed over channels"] == "held"
    assert claims["ranking the patches helps"] == "tie"
    assert claims["the diversity loss helps"] == "did not hold"
    assert claims["FusionNet adds to AttentionNet alone"] == "held"
    # the worst of the other Table VII variants is w/SA (6.0), beaten by AttentionNet alone's 7.0
    assert claims["AttentionNet alone drops the most of the Table VII variants"] == "held"
    assert claims["the diversity loss keeps the heads' maps apart"] == "held"
    assert claims["dynamic patches beat the fixed ones of the authors' prior work"] == "held"
    assert claims["attention and patches help: ADPF beats the same main stream without them"] == "tie"
    # 5 heads (5.0) against the best of the others (3 heads, 4.0)
    assert claims["5 or 6 heads are best"] == "did not hold"
    # no region masks (real faces): not measured; no heads record: not measured
    assert claims["self-attention strays to unimportant regions"] == "not measured"
    assert check_claims(ablation).set_index("claim").loc["5 or 6 heads are best", "verdict"] == "not measured"
    measured = check_claims(ablation, heads).set_index("claim").loc["the diversity loss helps", "measured"]
    assert measured == "MAE (years): ADPF 5.00 ± 0.10 vs ADPF w/o diversity loss 4.00 ± 0.10"


def test_claims_on_attention_shares():
    means = {"ADPF": 5.0, "ADPF w/SA": 5.0, "ADPF w/o diversity loss": 5.0}
    ablation = claim_rows(means, region_share={"ADPF": 0.3, "ADPF w/SA": 0.2, "ADPF w/o diversity loss": 0.3},
                          region_area={"ADPF": 0.1, "ADPF w/SA": 0.1, "ADPF w/o diversity loss": 0.1})
    ablation["region_area"] = 0.1
    claims = check_claims(ablation).set_index("claim")["verdict"]
    assert claims["self-attention strays to unimportant regions"] == "held"
    assert claims["with the diversity loss more attention lands on the true age regions"] == "tie"
    assert claims["FusionNet adds to AttentionNet alone"] == "not measured"


def test_a_record_is_made_again_by_its_own_command(data, cache, tmp_path):
    command = shlex.join(["adpf", "experiments", "ablation", *TINY_ARGS, "--data", str(data.root), "--rows",
                          "plain CNN", "--epochs", "1", "--batch-size", "8", "--no-progress", "--seeds", "0",
                          "--record", "results/plain.json"])
    assert run_command(command, root=tmp_path) == 0
    record = read_record(tmp_path / "results" / "plain.json")
    assert record["command"] == command and [(r["model"], r["seed"]) for r in record["rows"]] == [("plain CNN", 0)]
    # made again: its finished row is kept
    assert run_command(command, root=tmp_path) == 0
    assert read_record(tmp_path / "results" / "plain.json")["rows"] == record["rows"]
    with pytest.raises(ValueError, match="not an adpf experiments command"):
        run_command("rm -rf /", root=tmp_path)


def test_the_command_line_writes_a_record(data, cache, tmp_path, capsys):
    path = tmp_path / "record.json"
    argv = ["experiments", "ablation", *TINY_ARGS, "--data", str(data.root), "--rows", "plain CNN",
            "--epochs", "1", "--batch-size", "8", "--recipe", "book", "--no-progress", "--val", "0.2",
            "--seeds", "0", "1", "--record", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("plain CNN") == 2 and "history" not in out
    record = read_record(path)
    assert record["command"] == shlex.join(["adpf", *argv])
    assert record["seeds"] == [0, 1] and len(record["rows"]) == 2
    assert main([*argv[:-5], "--seed", "3", "--seeds", "0", "--record", str(path)]) == 2
    assert "--seed and --seeds" in capsys.readouterr().err
    assert main(["experiments", "heads", "--test-on", str(data.root)]) == 2
    assert "--test-on goes with the ablation table" in capsys.readouterr().err


def test_seed_table_gives_mean_and_std_per_model_and_a_dash_where_nothing_was_measured():
    rows = pd.DataFrame({"model": ["b", "b", "a", "a"], "mae": [1.0, 3.0, 2.0, 2.0],
                         "overlap": [np.nan, np.nan, 0.5, 0.7], "cs5": [0.1, 0.2, 0.3, 0.3]})
    table = seed_table(rows, {"MAE": "mae", "overlap": "overlap", "CS(5)": "cs5", "none": "missing"},
                       digits={"cs5": 3})
    assert table.to_dict("list") == {"model": ["b", "a"], "MAE": ["2.00 ± 1.41", "2.00 ± 0.00"],
                                     "overlap": ["—", "0.60 ± 0.14"], "CS(5)": ["0.150 ± 0.071", "0.300 ± 0.000"],
                                     "none": ["—", "—"]}
    assert mean_pm_std([4.0]) == "4.00"


def test_book_records_notes_and_overview(data, cache, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="make it from the repository's root with: adpf experiments ablation"):
        book_records(tmp_path)
    for name in ("ablation-synthetic", "heads-synthetic"):
        ablation_table(get_preset("cpu", **TINY), data, VAL_SPLIT, RECIPE, rows=["plain CNN"], seeds=[0, 1],
                       record=tmp_path / f"{name}.json", command=f"adpf experiments ablation # {name}",
                       progress=False)
    found = book_records(tmp_path)
    assert list(found) == ["ablation-synthetic", "heads-synthetic"]
    overview = records_overview(found)
    assert overview["rows"].tolist() == [2, 2] and overview["code"].tolist() == ["current"] * 2
    assert overview["train / val / test"].iloc[0] == "26 / 6 / 8"
    notes = record_notes(found, tmp_path)
    assert "{warning}" not in notes
    # the optional records are missing: a note with the command of each (curves-synthetic was
    # retired: every row carries its own curves)
    missing = [name for name in experiments.BOOK_RECORDS if name not in found]
    assert len(missing) == len(experiments.BOOK_RECORDS) - 2
    assert notes.count("```{note}") == len(missing)
    assert all(experiments.BOOK_RECORDS[name] in notes for name in missing)
    assert "curves-synthetic" not in experiments.BOOK_RECORDS
    # after a change of the code every record warns
    monkeypatch.setattr(experiments, "code_version", lambda: "0.0+changed")
    notes = record_notes(found, tmp_path)
    assert notes.count("```{warning}") == 2 and "adpf experiments ablation # heads-synthetic" in notes
    assert records_overview(found)["code"].tolist() == ["changed since"] * 2


def test_a_claim_with_one_seed_on_a_side_has_no_verdict():
    rows = pd.DataFrame({"model": ["ADPF", "ADPF", "plain CNN"], "seed": [0, 1, 0], "mae": [5.0, 5.2, 9.0]})
    claims = check_claims(rows).set_index("claim")
    beats_plain = [c for c in claims.index if "plain CNN" in claims.loc[c, "measured"]]
    assert beats_plain and (claims.loc[beats_plain, "verdict"] == "one seed").all()
    rows = pd.concat([rows, pd.DataFrame({"model": ["plain CNN"], "seed": [1], "mae": [9.1]})])
    claims = check_claims(rows).set_index("claim")
    assert (claims.loc[beats_plain, "verdict"] == "held").all()
