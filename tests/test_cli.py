"""The ``adpf`` command end to end in subprocesses on tiny data (train → evaluate → predict), and its
one-line errors."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adpf.cli import main
from adpf.config import get_preset
from adpf.data.prepared import write_prepared
from adpf.networks import parameter_table

REPO = Path(__file__).resolve().parents[1]
AAF = Path(__file__).resolve().parents[2] / "shared" / "data" / "aaf-wild-sample" / "images"
TINY = ["--set", "image_size=16", "--set", "x_size=4", "--set", "stem_channels=[4,4,4]", "--set", "x_channels=6",
        "--set", "heads=3", "--set", "key_channels=4", "--set", "value_channels=4", "--set", "ca_reduction=2",
        "--set", "fusion_channels=[4,6,8]", "--set", "patch_size=8", "--set", "patch_channels=3",
        "--set", "age_max=9"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 60).astype(float), "subject": np.arange(60) // 3})
    data = write_prepared(root / "tiny", images, meta, name="tiny")
    variables = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                 "ADPF_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    return {"root": root, "data": data, "env": variables}


def adpf(env, *args):
    return subprocess.run([sys.executable, "-m", "adpf.cli", *map(str, args)], env=env["env"], cwd=env["root"],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)


def test_train_evaluate_predict(env):
    out = env["root"] / "run"
    train = adpf(env, "train", *TINY, "--data", env["data"], "--recipe", "book", "--epochs", "1",
                 "--batch-size", "8", "--no-progress", "--out", out)
    assert train.returncode == 0, train.stderr
    result = json.loads((out / "result.json").read_text())
    assert (out / "model.pt").is_file() and result["config"]["variant"] == "adpf"
    assert f"test MAE {result['metrics']['test']['mae']:.3f}" in train.stdout

    evaluate = adpf(env, "evaluate", out, "--data", env["data"], "--json", env["root"] / "metrics.json")
    assert evaluate.returncode == 0, evaluate.stderr
    metrics = json.loads((env["root"] / "metrics.json").read_text())
    assert metrics["mae"] == pytest.approx(result["metrics"]["test"]["mae"], abs=1e-4)
    assert f"MAE {metrics['mae']:.3f}" in evaluate.stdout and "CS(v) 0:" in evaluate.stdout

    photo = env["root"] / "face.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photo)
    drawn = env["root"] / "patches.png"
    predict = adpf(env, "predict", photo, "--checkpoint", out / "model.pt", "--no-align", "--save-patches", drawn)
    assert predict.returncode == 0, predict.stderr
    age, std = map(float, re.search(r"face\.png: ([\d.]+) ± ([\d.]+) years", predict.stdout).groups())
    assert 0 <= age <= 9 and std >= 0
    assert Image.open(drawn).size[0] > 50

    photos = [photo] + ([AAF / "00028A02.jpg"] if AAF.is_dir() else [])
    aligned = adpf(env, "predict", *photos, "--checkpoint", out)
    assert aligned.returncode == 1  # the random picture has no face: reported, and the others go on
    assert "face.png: skipped: no face found" in aligned.stderr
    if AAF.is_dir():
        assert re.search(r"00028A02\.jpg: [\d.]+ ± [\d.]+ years", aligned.stdout), aligned.stderr


def test_a_missing_file_is_one_line_with_status_2(env):
    done = adpf(env, "evaluate", env["root"] / "nothere.pt", "--data", env["data"])
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"adpf evaluate: error: checkpoint {env['root'] / 'nothere.pt'}: no such file"]


def test_errors_in_process_name_the_problem(env, capsys):
    assert main(["train", "--data", str(env["root"] / "nodata"), "--no-progress"]) == 2
    assert "nodata: no prepared dataset folder here" in capsys.readouterr().err
    assert main(["train", "--set", "nofield=3"]) == 2
    assert "--set 'nofield=3': expected FIELD=VALUE" in capsys.readouterr().err
    assert main(["train", *TINY, "--set", "heads=4"]) == 2
    assert "invalid config" in capsys.readouterr().err
    assert main(["train", "--epochs", "1,2,3"]) == 2
    assert "--epochs '1,2,3': expected N or A,F" in capsys.readouterr().err
    assert main(["predict", "x.jpg", "--checkpoint", str(env["root"] / "none.pt")]) == 2
    assert "none.pt: no such file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--device", "cuda"]) == 2
        assert "--device cuda: CUDA is not available here" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "huge"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'huge'" in err


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "info", "experiments", "benchmark"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage: adpf " + command in capsys.readouterr().out


def test_info_prints_the_parameter_counts(capsys):
    assert main(["info", "--preset", "cpu"]) == 0
    out = capsys.readouterr().out
    for variant, attention, fusion, total in parameter_table(get_preset("cpu")):
        assert re.search(rf"{variant}\s+{attention:,}\s+{fusion:,}\s+{total:,}", out), variant


def test_experiments_prints_the_table(env, capsys, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(env["root"] / "cache-exp"))
    table = env["root"] / "table.csv"
    assert main(["experiments", "ablation", *TINY, "--data", str(env["data"]), "--rows", "plain CNN,fixed patches",
                 "--epochs", "1", "--batch-size", "8", "--recipe", "book", "--no-progress", "--out", str(table)]) == 0
    out = capsys.readouterr().out
    assert "plain CNN" in out and "fixed patches" in out
    assert pd.read_csv(table)["model"].tolist() == ["plain CNN", "fixed patches"]
    text = env["root"] / "table.txt"
    assert main(["experiments", "ablation", *TINY, "--data", str(env["data"]), "--rows", "plain CNN",
                 "--epochs", "1", "--batch-size", "8", "--recipe", "book", "--no-progress", "--out", str(text)]) == 0
    header = [line for line in text.read_text().splitlines() if line.startswith("# ")]
    assert header[1].startswith("# command: adpf experiments ablation --set image_size=16")
    assert "60 images, 16×16 px" in header[2] and "attention_epochs=1" in header[3]
    assert "plain CNN" in text.read_text().splitlines()[-1] and "True" in text.read_text().splitlines()[-1]
    assert main(["experiments", "ablation", "--rows", "ADPF,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
