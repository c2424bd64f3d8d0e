"""What users of the ``adpf`` command expect, end to end in subprocesses on tiny data: ``--version``,
progress bars, a checkpoint that remembers its data, batch prediction to CSV/JSON, per-age-band
metrics and calibration, export, and the paper's protocols fold by fold."""
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import adpf
from adpf.checkpoint import load_checkpoint, load_model, save_checkpoint
from adpf.data.align import load_image, square_resize
from adpf.data.prepared import write_prepared
from adpf.losses import predict_age
from adpf.photos import predict_photos
from cli_env import REPO, TINY, tiny_env

QUICK = ["--recipe", "book", "--epochs", "1", "--batch-size", "8", "--no-progress"]


def command(*args):
    return [sys.executable, "-m", "adpf.cli", *map(str, args)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_env(tmp_path_factory.mktemp("features"), info={"aligned": False})


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
    assert record["data"] == record["root"] == str(Path(env["data"]).resolve()) and record["name"] == "tiny"
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


# --- adpf predict on folders and lists ----------------------------------------------------------

AAF = REPO.parent / "shared" / "data" / "aaf-wild-sample" / "images"


def noise_photo(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def photo_folder(env):
    folder = env["root"] / "photos"
    noise_photo(folder / "b.png", 30, 40, 1)
    noise_photo(folder / "a.jpg", 50, 20, 2)
    noise_photo(folder / "sub" / "c.png", 16, 16, 3)
    noise_photo(folder / ".hidden" / "d.png", 16, 16, 4)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def expected_ages(checkpoint, files):
    """Ages and stds of the in-process model on the central squares of ``files``, one forward each."""
    model = load_model(checkpoint)
    out = []
    for f in files:
        face = square_resize(load_image(f), model.config.image_size)
        with torch.no_grad():
            logits = model(torch.from_numpy(face).permute(2, 0, 1).float().div(255)[None]).logits
        out.append(tuple(float(v) for v in predict_age(logits, model.config)))
    return out


def test_predict_a_folder_to_csv_and_json(env, trained, photo_folder):
    csv, js = env["root"] / "ages.csv", env["root"] / "ages.json"
    done = run_adpf(env, "predict", photo_folder, "--checkpoint", trained, "--csv", csv, "--json", js,
                    "--batch-size", "2")
    assert done.returncode == 0, done.stderr
    files = [photo_folder / "a.jpg", photo_folder / "b.png", photo_folder / "sub" / "c.png"]  # sorted, no hidden
    table = pd.read_csv(csv)
    assert list(table.columns) == ["file", "face", "age", "std", "x0", "y0", "x1", "y1", "aligned", "faces_found",
                                   "doubts", "error"]
    assert table["file"].tolist() == [str(f) for f in files]
    for (_, row), (age, std) in zip(table.iterrows(), expected_ages(trained / "model.pt", files)):
        assert row["age"] == pytest.approx(age, abs=2e-3) and row["std"] == pytest.approx(std, abs=2e-3)
    # the training faces were resized crops (recorded), so the photos are too: the central square
    assert table[["x0", "y0", "x1", "y1"]].values.tolist() == [[0, 15, 20, 35], [5, 0, 35, 30], [0, 0, 16, 16]]
    assert not table["aligned"].any() and (table["faces_found"] == 1).all() and (table["face"] == 0).all()
    assert table["error"].isna().all() and table["doubts"].isna().all()
    rows = json.loads(js.read_text())
    assert [r["file"] for r in rows] == table["file"].tolist()
    assert [r["age"] for r in rows] == pytest.approx(table["age"].tolist(), abs=1e-3)
    assert rows[0]["error"] == "" and rows[0]["x1"] == 20
    for f, (age, std) in zip(files, zip(table["age"], table["std"])):
        assert f"{f}: {age:.1f} ± {std:.1f} years" in done.stdout


def test_predict_a_list_reports_bad_photos_and_goes_on(env, trained, photo_folder, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    listed = tmp_path / "photos.txt"
    listed.write_text(f"# my photos\n{photo_folder / 'b.png'}\nempty.png\n\nmissing.jpg\n")
    csv = tmp_path / "ages.csv"
    done = run_adpf(env, "predict", "--list", listed, "--checkpoint", trained, "--csv", csv, "--no-align")
    assert done.returncode == 1  # some skipped, the rest predicted (documented in --help)
    table = pd.read_csv(csv, keep_default_na=False)
    assert table["file"].tolist() == [str(photo_folder / "b.png"), str(tmp_path / "empty.png"),
                                      str(tmp_path / "missing.jpg")]
    assert table["error"].tolist()[0] == "" and table["age"].tolist()[1:] == ["", ""]
    assert "no such file" in table["error"][2]
    errors = [line for line in done.stderr.splitlines() if "skipped" in line]
    assert len(errors) == 2 and errors[1] == f"{tmp_path / 'missing.jpg'}: skipped: no such file"
    helped = run_adpf(env, "predict", "--help")
    assert "1 some photos were skipped" in helped.stdout.replace("\n", " ").replace("  ", " ")


def test_predict_without_photos_is_a_usage_error(env, trained, tmp_path):
    (tmp_path / "nothing").mkdir()
    done = run_adpf(env, "predict", tmp_path / "nothing", "--checkpoint", trained)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"adpf predict: error: no photos found in {tmp_path / 'nothing'}"
    assert run_adpf(env, "predict", "--checkpoint", trained).returncode == 2


class CountingModel(nn.Module):
    """A model that records the batch size of every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, []

    def forward(self, x):
        self.calls.append(len(x))
        return self.inner(x)


def test_predict_photos_batches_the_forward_passes(trained, photo_folder, tmp_path):
    files = [photo_folder / "a.jpg", photo_folder / "b.png", tmp_path / "none.png", photo_folder / "sub" / "c.png",
             photo_folder / "b.png"]
    model = CountingModel(load_model(trained / "model.pt"))
    rows = list(predict_photos(model, files, alignment="resize", batch_size=2, progress=True))
    assert model.calls == [2, 2]  # 4 readable photos, 2 per forward; the missing one never reaches the model
    assert [r.file for r in rows] == list(map(str, files)) and rows[2].error == "no such file"
    good = [f for f in files if f.exists()]
    # batches of 2 against one forward each: float sums in another order (README: ages depend on the
    # batch by up to a few hundredths of a year; 1.4e-4 seen here on this tiny model)
    for row, (age, std) in zip([r for r in rows if not r.error], expected_ages(trained / "model.pt", good)):
        assert row.age == pytest.approx(age, abs=1e-3) and row.std == pytest.approx(std, abs=1e-3)


def set_alignment(checkpoint, alignment, out):
    state = load_checkpoint(checkpoint)
    state["meta"]["trained_on"]["alignment"] = alignment
    save_checkpoint(state, out)
    return out


def test_predict_aligns_like_the_training_and_warns_about_drawn_faces(env, trained, photo_folder, tmp_path):
    dlib_model = set_alignment(trained / "model.pt", "dlib", tmp_path / "dlib.pt")
    done = run_adpf(env, "predict", photo_folder / "b.png", "--checkpoint", dlib_model)
    assert done.returncode == 1 and "b.png: skipped: no face found" in done.stderr  # dlib looked for a face
    assert "were prepared without a record of their fill beyond the photo's edge; these crops are filled" in done.stderr
    state = load_checkpoint(dlib_model)
    state["meta"]["trained_on"]["info"]["fill"] = "black"
    save_checkpoint(state, tmp_path / "black.pt")
    done = run_adpf(env, "predict", photo_folder / "b.png", "--checkpoint", tmp_path / "black.pt")
    assert "training faces of" in done.stderr and "were filled 'black' beyond the photo's edge" in done.stderr
    drawn = set_alignment(trained / "model.pt", "synthetic", tmp_path / "drawn.pt")
    done = run_adpf(env, "predict", photo_folder, "--checkpoint", drawn, "--align", "resize")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "trained on the drawn (synthetic) faces" in warnings[0]  # once, for 3 photos
    assert len(re.findall(r"years", done.stdout)) == 3


def test_predict_every_face_of_a_photo(env, trained, tmp_path):
    """Two real faces side by side: the largest by default (and said so), each with --all-faces."""
    if not AAF.is_dir():
        pytest.fail(f"the real faces for this test are missing: {AAF}")
    left, right = Image.open(AAF / "00028A02.jpg"), Image.open(AAF / "00034A02.jpg").resize((260, 292))
    pair = Image.new("RGB", (left.width + right.width + 40, left.height), (90, 90, 90))
    pair.paste(left, (0, 0))
    pair.paste(right, (left.width + 40, 20))
    pair.save(tmp_path / "pair.png")
    dlib_model = set_alignment(trained / "model.pt", "dlib", tmp_path / "dlib.pt")
    csv = tmp_path / "one.csv"
    done = run_adpf(env, "predict", tmp_path / "pair.png", "--checkpoint", dlib_model, "--csv", csv)
    assert done.returncode == 0, done.stderr
    one = pd.read_csv(csv)
    assert len(one) == 1 and one["faces_found"][0] == 2 and one["face"][0] == 0 and one["aligned"][0]
    assert "2 faces found; the largest, at (" in done.stdout
    assert one["x1"][0] <= left.width + 5  # the larger face is the left one
    done = run_adpf(env, "predict", tmp_path / "pair.png", "--checkpoint", dlib_model, "--csv", csv, "--all-faces")
    assert done.returncode == 0, done.stderr
    both = pd.read_csv(csv)
    assert both["face"].tolist() == [0, 1] and (both["faces_found"] == 2).all()
    assert both["x0"][1] >= left.width and both["x1"][0] <= left.width + 5
    assert "[face 1 of 2]" in done.stdout and "[face 2 of 2]" in done.stdout
    assert both["age"][0] == pytest.approx(one["age"][0], abs=1e-3)


# --- adpf protocol ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subjects_data(env):
    """Six people, four faces each, with MORPH-like race and gender columns."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    person = np.arange(24) // 4
    meta = pd.DataFrame({"age": rng.integers(0, 10, 24).astype(float), "subject": person,
                         "race": np.where(person % 3 == 0, "B", "W"), "gender": np.where(person % 2, "M", "F")})
    return write_prepared(env["root"] / "people", images, meta, name="people", info={"alignment": "resize"})


def test_protocol_resumes_fold_by_fold(env, subjects_data):
    out = env["root"] / "lopo"
    first = run_adpf(env, "protocol", "fgnet-lopo", *TINY, "--data", subjects_data, *QUICK, "--out", out,
                     "--max-folds", "2")
    assert first.returncode == 0, first.stderr
    record = json.loads((out / "protocol.json").read_text())
    assert [f["split"] for f in record["folds"]] == ["lopo-0", "lopo-1"] and record["finished"] is None
    assert "2 of 6 folds" in first.stdout
    rest = run_adpf(env, "protocol", "fgnet-lopo", *TINY, "--data", subjects_data, *QUICK, "--out", out)
    assert rest.returncode == 0, rest.stderr
    again = json.loads((out / "protocol.json").read_text())
    assert again["folds"][:2] == record["folds"]  # the finished folds were kept, not trained again
    assert [f["split"] for f in again["folds"]] == [f"lopo-{i}" for i in range(6)] and again["finished"]
    assert all(f["test"] == 4 and f["train"] == 20 and not f["cached"] for f in again["folds"][2:])
    maes = [f["mae"] for f in again["folds"]]
    mean, std = np.mean(maes), np.std(maes, ddof=1)
    pooled = sum(f["mae"] * f["test"] for f in again["folds"]) / sum(f["test"] for f in again["folds"])
    assert f"6 of 6 folds: MAE {mean:.3f} ± {std:.3f}" in rest.stdout
    assert f"MAE over all test images {pooled:.3f}" in rest.stdout
    # another recipe: the record is not overwritten, one line says why
    other = run_adpf(env, "protocol", "fgnet-lopo", *TINY, "--data", subjects_data, *QUICK, "--lr", "0.5",
                     "--out", out)
    assert other.returncode == 2 and "holds a run with another recipe" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert json.loads((out / "protocol.json").read_text()) == again


def test_protocol_morph_and_cacd_splits(env, subjects_data):
    out = env["root"] / "setting3"
    done = run_adpf(env, "protocol", "morph-setting3", *TINY, "--data", subjects_data, *QUICK, "--out", out,
                    "--folds", "2", "--images", "0")
    assert done.returncode == 0, done.stderr
    folds = json.loads((out / "protocol.json").read_text())["folds"]
    assert len(folds) == 2 and sum(f["test"] for f in folds) == 16  # the 4 White people's 16 faces, once each
    done = run_adpf(env, "protocol", "cacd", *TINY, "--data", subjects_data, *QUICK, "--out", env["root"] / "cacd")
    assert done.returncode == 0, done.stderr
    assert "cacd: 1 of 1 folds: MAE" in done.stdout and "nan" not in done.stdout
    # once: nothing said about the 1,800 / 120 / 80 split it could not make
    assert "not CACD's 2,000 celebrities (and no 'split' column): split in CACD's proportions instead" in done.stderr
    bad = run_adpf(env, "protocol", "morph-setting2", *TINY, "--data", env["data"], *QUICK, "--out",
                   env["root"] / "s2")
    assert bad.returncode == 2 and "need a 'race' column" in bad.stderr


def test_protocol_progress_bar_counts_folds(env, subjects_data):
    bars = [a for a in QUICK if a != "--no-progress"]
    status, out, err = run_on_terminal(env, "protocol", "fgnet-lopo", *TINY, "--data", subjects_data, *bars,
                                       "--out", env["root"] / "lopo")  # finished: every fold is skipped
    assert status == 0 and "fgnet-lopo: 100%" in err and "6/6" in err and "6 of 6 folds" in out


def test_training_bars_on_a_terminal_only(env, tmp_path):
    bars = [a for a in QUICK if a != "--no-progress"]
    args = ["train", *TINY, "--data", env["data"], *bars, "--no-cache", "--split-seed", "7"]
    status, _, err = run_on_terminal(env, *args)
    assert status == 0 and "attention (attention_only)" in err and "fusion (adpf)" in err
    piped = run_adpf(env, *args)
    assert piped.returncode == 0 and "attention (" not in piped.stderr and "it/s" not in piped.stderr
