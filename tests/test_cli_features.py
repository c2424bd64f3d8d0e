"""What users of the ``adpf`` command expect, end to end in subprocesses on tiny data: ``--version``,
progress bars, a checkpoint that remembers its data, batch prediction to CSV/JSON, per-age-band
metrics and calibration, export, and the paper's protocols fold by fold."""
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import adpf
from adpf.checkpoint import load_checkpoint
from adpf.data.prepared import write_prepared

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "image_size=16", "--set", "x_size=4", "--set", "stem_channels=[4,4,4]", "--set", "x_channels=6",
        "--set", "heads=3", "--set", "key_channels=4", "--set", "value_channels=4", "--set", "ca_reduction=2",
        "--set", "fusion_channels=[4,6,8]", "--set", "patch_size=8", "--set", "patch_channels=3",
        "--set", "age_max=9"]
QUICK = ["--recipe", "book", "--epochs", "1", "--batch-size", "8", "--no-progress"]


def command(*args):
    return [sys.executable, "-m", "adpf.cli", *map(str, args)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 60).astype(float), "subject": np.arange(60) // 3})
    data = write_prepared(root / "tiny", images, meta, name="tiny", info={"aligned": False})
    variables = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                 "ADPF_CACHE_DIR": str(root / "cache"), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    return {"root": root, "data": data, "env": variables}


def run_adpf(env, *args, timeout=300):
    return subprocess.run(command(*args), env=env["env"], cwd=env["root"], capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)


def run_on_terminal(env, *args, timeout=300):
    """Run with stderr on a pseudo-terminal (as in an interactive shell); returns (status, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing 0 wide
    proc = subprocess.Popen(command(*args), env=env["env"], cwd=env["root"], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    out = proc.stdout.read().decode()
    proc.wait(timeout=timeout)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def trained(env):
    """A tiny ADPF trained for 1 + 1 epochs with --out, on the split --test 0.3 --split-seed 3."""
    out = env["root"] / "run"
    done = run_adpf(env, "train", *TINY, "--data", env["data"], *QUICK, "--test", "0.3", "--split-seed", "3",
                    "--out", out)
    assert done.returncode == 0, done.stderr
    return out


def test_version(env):
    done = run_adpf(env, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"adpf {adpf.__version__}"


def test_the_checkpoint_records_its_data_and_split(env, trained):
    record = load_checkpoint(trained / "model.pt")["meta"]["trained_on"]
    assert record["data"] == str(Path(env["data"]).resolve()) and record["name"] == "tiny"
    assert record["image_size"] == 16 and record["count"] == 60 and record["alignment"] == "resize"
    assert record["info"]["aligned"] is False and record["synthetic_n"] is None
    assert record["split"] == {"test": 0.3, "val": 0.1, "split_seed": 3, "fold": None}


def test_evaluate_needs_no_data_options(env, trained):
    """Without --data the recorded folder and split are used: the same test set, the same MAE as training."""
    result = json.loads((trained / "result.json").read_text())
    done = run_adpf(env, "evaluate", trained, "--json", env["root"] / "metrics.json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((env["root"] / "metrics.json").read_text())
    assert metrics["count"] == result["metrics"]["test"]["count"]
    assert metrics["mae"] == pytest.approx(result["metrics"]["test"]["mae"], abs=1e-4)
    assert "trained on tiny" in done.stdout and "split seed 3" in done.stdout
    # given options win over the recorded ones: another split seed, another test set
    other = run_adpf(env, "evaluate", trained, "--split-seed", "4", "--json", env["root"] / "other.json")
    assert other.returncode == 0, other.stderr
    assert json.loads((env["root"] / "other.json").read_text())["mae"] != pytest.approx(metrics["mae"], abs=1e-6)


def test_evaluate_prints_age_bands_and_calibration(env, trained):
    done = run_adpf(env, "evaluate", trained, "--on", "all", "--json", env["root"] / "all.json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((env["root"] / "all.json").read_text())
    assert metrics["count"] == 60 and metrics["age_groups"]["group"] == ["0-12"]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["true", "age", "count"])
    assert lines[header].split() == ["true", "age", "count", "MAE", "CS(1)", "CS(3)", "CS(5)", "CS(10)"]
    band = lines[header + 1].split()
    assert band[:2] == ["0-12", "60"] and float(band[2]) == pytest.approx(metrics["mae"], abs=1e-3)
    cal = metrics["calibration"]
    assert f"{cal['within_1std']:.1%} of the faces within ±1σ (a Gaussian: 68.3%)" in done.stdout
    assert f"{cal['within_2std']:.1%} within ±2σ (a Gaussian: 95.4%)" in done.stdout


def test_evaluate_names_a_recorded_folder_that_is_gone(env, trained, tmp_path):
    moved = tmp_path / "moved"
    os.rename(env["data"], moved)
    try:
        done = run_adpf(env, "evaluate", trained)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"adpf evaluate: error: {trained / 'model.pt'} was trained on {Path(env['data']).resolve()}, "
            "which is not there any more; pass --data"]
        given = run_adpf(env, "evaluate", trained, "--data", moved)
        assert given.returncode == 0, given.stderr
    finally:
        os.rename(moved, env["data"])


def test_progress_bar_on_a_terminal_only(env, trained):
    status, _, err = run_on_terminal(env, "evaluate", trained, "--batch-size", "4")
    assert status == 0 and "evaluating" in err and "batch" in err
    status, _, err = run_on_terminal(env, "evaluate", trained, "--batch-size", "4", "--no-progress")
    assert status == 0 and "evaluating" not in err
    piped = run_adpf(env, "evaluate", trained, "--batch-size", "4")
    assert piped.returncode == 0 and "evaluating" not in piped.stderr
