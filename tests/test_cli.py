"""The ``adpf`` command end to end in subprocesses on tiny data (train → evaluate → predict), and its
one-line errors."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adpf.checkpoint import is_temporary, load_checkpoint, save_checkpoint
from adpf.cli import UsageError, field_values, main
from adpf.config import ADPFConfig, get_preset
from adpf.data.prepared import write_prepared
from adpf.networks import parameter_table
from adpf.recipes import Recipe
from cli_env import TINY, TINY_CONFIG, tiny_checkpoint, tiny_env

AAF = Path(__file__).resolve().parents[2] / "shared" / "data" / "aaf-wild-sample" / "images"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_env(tmp_path_factory.mktemp("cli"))


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


@pytest.mark.parametrize("item, changes", [
    ("ranking=False", {"ranking": False}), ("ranking=false", {"ranking": False}),
    ("ranking=True", {"ranking": True}), ("sigma=2", {"sigma": 2.0}),
    ("patch_threshold=mean", {"patch_threshold": "mean"}), ("patch_threshold=0.4", {"patch_threshold": 0.4}),
    ("stem_channels=[4,8]", {"stem_channels": (4, 8)}), ("attention=self_sum", {"attention": "self_sum"})])
def test_set_parses_each_field_by_its_type(item, changes):
    parsed = field_values([item], ADPFConfig, "--set")
    assert parsed == changes and all(type(parsed[k]) is type(v) for k, v in changes.items())
    if "ranking" in parsed:  # the config the run gets: "False" must not reach it as a true string
        assert get_preset("cpu", **parsed).ranking is changes["ranking"]


@pytest.mark.parametrize("option, cls, item, message", [
    ("--set", ADPFConfig, "ranking=no", "ranking takes true or false, got 'no'"),
    ("--set", ADPFConfig, "heads=2.5", "heads takes a whole number, got 2.5"),
    ("--set", ADPFConfig, "sigma=true", "sigma takes a number, got True"),
    ("--set", ADPFConfig, "patch_threshold=median", "patch_threshold takes a number or one of 'mean', got 'median'"),
    ("--set", ADPFConfig, "stem_channels=[4,4.5]", "stem_channels takes a JSON list, each a whole number"),
    ("--set", ADPFConfig, "attention=Hybrid", "attention takes one of 'hybrid', 'self_sum', got 'Hybrid'"),
    ("--set-recipe", Recipe, "amp=False", None), ("--set-recipe", Recipe, "clip_grad_norm=null", None),
    ("--set-recipe", Recipe, "pad=x", "pad takes a whole number or null, got 'x'")])
def test_set_rejects_a_value_of_the_wrong_type(option, cls, item, message):
    if message is None:  # accepted, with the field's type
        value = field_values([item], cls, option)[item.partition("=")[0]]
        assert value in (False, None) and not isinstance(value, str)
        return
    with pytest.raises(UsageError) as error:
        field_values([item], cls, option)
    assert str(error.value).startswith(f"{option} {item!r}: ") and message in str(error.value)


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


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "info", "experiments"])
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


# --- one-line errors, checked before the work ---------------------------------------------------

def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("args, expected", [
    (["train", "--heads", "0"], "adpf train: error: invalid config: heads must be a whole number >= 1, got 0"),
    (["train", "--set", "heads=0"], "adpf train: error: invalid config: heads must be a whole number >= 1, got 0"),
    (["experiments", "heads", "--heads-list", "0"],
     "adpf experiments: error: --heads-list '0': 0 heads: heads must be a whole number >= 1, got 0"),
    (["train", "--device", "tpu"], "adpf train: error: --device tpu: expected auto, cpu, cuda or cuda:N"),
])
def test_usage_errors_are_one_line_and_status_2_in_a_subprocess(env, args, expected):
    # once: ZeroDivisionError / RuntimeError tracebacks, exit status 1
    done = adpf(env, *args)
    assert done.returncode == 2 and one_line(done.stderr) == expected


def test_heads_list_rows_are_checked_before_any_training(env, cache, capsys):
    assert main(["experiments", "heads", "--heads-list", "1,0", "--data", str(env["root"] / "nodata")]) == 2
    assert one_line(capsys.readouterr().err).endswith("--heads-list '1,0': 0 heads: heads must be a whole number "
                                                      ">= 1, got 0")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_an_unknown_device_is_named_not_the_checkpoint(env, tmp_path, command, capsys):
    # once: "adpf evaluate: error: checkpoint ...: cannot be read (RuntimeError: ...tpu...)"
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    args = [str(checkpoint)] if command == "evaluate" else ["x.jpg", "--checkpoint", str(checkpoint)]
    assert main([command, *args, "--device", "tpu"]) == 2
    assert one_line(capsys.readouterr().err) == f"adpf {command}: error: --device tpu: expected cpu, cuda or cuda:N"
    assert main([command, *args, "--device", "cuda:x"]) == 2
    assert "--device cuda:x: expected cpu, cuda or cuda:N" in capsys.readouterr().err


def test_train_refuses_an_out_that_is_a_file_before_training(env, cache, tmp_path, capsys):
    # once: the training ran, then a FileExistsError traceback
    taken = tmp_path / "taken"
    taken.write_text("a file of the user's")
    base = ["train", *TINY, "--data", str(env["data"]), "--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main([*base, "--out", str(taken)]) == 2
    assert one_line(capsys.readouterr().err) == (f"adpf train: error: --out {taken}: is a file; expected a folder "
                                                 "to write model.pt, result.json into")
    assert taken.read_text() == "a file of the user's" and not (cache / "runs").exists()  # nothing trained
    (tmp_path / "run" / "model.pt").mkdir(parents=True)
    assert main([*base, "--out", str(tmp_path / "run")]) == 2
    assert "model.pt is a folder; cannot write the file model.pt there" in one_line(capsys.readouterr().err)
    assert main([*base, "--out", str(taken / "run")]) == 2
    assert one_line(capsys.readouterr().err).endswith(f"--out {taken / 'run'}: {taken} is a file, not a folder")
    assert not (cache / "runs").exists()


def test_evaluate_checks_its_json_path_first_and_names_it(env, tmp_path, capsys):
    # once: the evaluation ran, then an IsADirectoryError naming '.metrics.json.<random>.tmp'
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    folder = tmp_path / "metrics.json"
    folder.mkdir()
    assert main(["evaluate", str(checkpoint), "--data", str(env["data"]), "--json", str(folder)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) == f"adpf evaluate: error: --json {folder}: is a folder; expected a file name"
    assert ".tmp" not in err
    blocked = tmp_path / "notes.txt"
    blocked.write_text("x")
    assert main(["evaluate", str(checkpoint), "--data", str(env["data"]), "--json", str(blocked / "m.json")]) == 2
    assert one_line(capsys.readouterr().err).endswith(f"{blocked} is a file, not a folder")


def test_an_unwritable_output_folder_is_refused_first(env, tmp_path, capsys, monkeypatch):
    import tempfile

    def mkstemp(dir, **kw):  # as in a folder a non-root user may not write into
        if Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied")
        return real(dir=dir, **kw)

    real = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert main(["evaluate", str(tmp_path / "none.pt"), "--json", str(tmp_path / "m.json")]) == 2
    assert one_line(capsys.readouterr().err).endswith(f"--json {tmp_path / 'm.json'}: cannot write into {tmp_path} "
                                                      "(permission denied)")


def test_save_patches_into_a_folder_writes_inside_it(env, tmp_path, capsys):
    # once: --save-patches DIR wrote DIR.png beside the folder
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    photo = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photo)
    folder = tmp_path / "figures"
    folder.mkdir()
    args = ["predict", str(photo), "--checkpoint", str(checkpoint), "--no-align", "--save-patches"]
    assert main([*args, str(folder)]) == 0
    assert f"drawn in {folder / 'patches.png'}" in capsys.readouterr().out
    assert Image.open(folder / "patches.png").size[0] > 50 and not (tmp_path / "figures.png").exists()
    assert main([*args, str(tmp_path / "new") + os.sep]) == 0  # a folder to be made: a name ending in /
    assert (tmp_path / "new" / "patches.png").is_file()
    assert main([*args, str(tmp_path / "drawing")]) == 2  # no suffix: neither a figure file nor a folder
    assert one_line(capsys.readouterr().err) == (f"adpf predict: error: --save-patches {tmp_path / 'drawing'}: "
                                                 "expected a file name ending in .png, .pdf, .svg, .jpg, .jpeg, "
                                                 "or a folder")
    assert not list(tmp_path.glob("drawing*"))


@pytest.mark.parametrize("epochs", ["0", "3,0", "0,2"])
def test_zero_epochs_are_refused_not_cached(env, cache, epochs, capsys):
    # once: trained nothing and stored the untrained network in the cache as a trained one
    assert main(["train", *TINY, "--data", str(env["data"]), "--epochs", epochs, "--no-progress"]) == 2
    assert one_line(capsys.readouterr().err) == (f"adpf train: error: --epochs {epochs!r}: every stage needs "
                                                 "at least 1 epoch")
    assert not (cache / "runs").exists()


def test_bad_checkpoints_are_one_line(env, tmp_path, capsys):
    heads0 = save_checkpoint({"config": {**TINY_CONFIG.to_dict(), "heads": 0}, "model": {}}, tmp_path / "h0.pt")
    assert main(["evaluate", str(heads0)]) == 2  # once: a ZeroDivisionError traceback
    assert one_line(capsys.readouterr().err) == (f"adpf evaluate: error: checkpoint {heads0}: bad config (heads "
                                                 "must be a whole number >= 1, got 0)")
    named = save_checkpoint({"config": "adpf", "model": {}}, tmp_path / "s.pt")
    assert main(["predict", "x.jpg", "--checkpoint", str(named)]) == 2  # once: "unknown ... ['a', 'd', 'f', 'p']"
    assert one_line(capsys.readouterr().err).endswith("not an adpf checkpoint ('config' is a str, expected a dict)")
    evil = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": {}, "run": argparse.Namespace(x=1)}, evil)
    assert main(["evaluate", str(evil)]) == 2  # once: torch's text, "weights_only=False will likely succeed"
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"adpf evaluate: error: checkpoint {evil}: cannot be read: refused, it holds the "
                           "Python object argparse.Namespace") and "weights_only" not in line


def test_predict_help_gives_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 every photo was predicted; 1 some photos were skipped" in text
    assert "2 usage error" in text


def test_train_sweeps_stale_temporaries_from_the_cache(env, cache, capsys):
    # a killed run's temporaries (SIGKILL, power cut): removed by the next run once stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs = cache / "runs" / "attention-k1"
    runs.mkdir(parents=True)
    stale = runs / f".checkpoint.pt.tmp-{dead.pid}-abcd1234"
    stale.write_bytes(b"x" * 1000)
    drawing = cache / "data" / ".synthetic-s64-n10000-seed0-v2.tmp-ab12cd34"  # an older version's name
    drawing.mkdir(parents=True)
    (drawing / "images.npy").write_bytes(b"y" * 2000)
    fresh = runs / f".stage.json.tmp-{dead.pid}-fresh123"
    fresh.write_text("{}")
    old = time.time() - 2 * 3600
    for path in (stale, drawing / "images.npy", drawing):
        os.utime(path, (old, old))
    assert main(["train", "--data", str(env["root"] / "nodata"), "--no-progress"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("adpf train: removed 2 stale temporary file(s) or folder(s) (0.0 MB) that killed runs "
                             "left in the cache: ") and err[0].endswith(" and others")
    assert not stale.exists() and not drawing.exists() and fresh.exists()
    assert len(err) == 2 and "no prepared dataset folder here" in err[1]


def test_main_restores_the_sigterm_handler(capsys):
    before = signal.getsignal(signal.SIGTERM)
    assert main(["info", "--preset", "cpu"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    """600 tiny faces: an epoch takes about a second, long enough to be interrupted in."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (600, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 600).astype(float), "subject": np.arange(600) // 3})
    return write_prepared(tmp_path_factory.mktemp("slow") / "tiny600", images, meta, name="tiny600")


def _as_from_a_shell():
    """In the child: Ctrl-C and SIGTERM as an interactive shell leaves them. A shell starts a
    background job (``make test &``, CI's own runner) with SIGINT ignored, an ignored signal
    stays ignored across exec, and the command under test would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(env, cache, *args):
    return subprocess.Popen([sys.executable, "-m", "adpf.cli", *map(str, args)], cwd=env["root"],
                            env={**env["env"], "ADPF_CACHE_DIR": str(cache)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", preexec_fn=_as_from_a_shell)


def wait_for(find, process, timeout=240):
    """Poll ``find()`` until it returns something, failing if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"the command ended (status {process.returncode}) before the signal: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("timed out waiting")


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if is_temporary(p.name)]


def test_ctrl_c_names_the_last_checkpoint_and_the_same_command_resumes(env, slow_data, tmp_path):
    # once: a 100-line KeyboardInterrupt traceback, exit status 1
    cache = tmp_path / "cache"
    command = ["train", *TINY, "--data", slow_data, "--recipe", "book", "--epochs", "3,1", "--batch-size", "8",
               "--no-progress"]
    process = start(env, cache, *command)
    wait_for(lambda: next(cache.glob("runs/attention-*/checkpoint.pt"), None), process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, (out, err)
    named = re.fullmatch(r"adpf train: interrupted; the last checkpoint is (\S+); the same command resumes from it",
                         one_line(err))
    assert named, err
    checkpoint = Path(named[1])
    assert checkpoint == max(cache.glob("runs/*/checkpoint.pt"), key=lambda p: p.stat().st_mtime_ns)
    assert not temporaries(cache)
    state = load_checkpoint(checkpoint)
    done = [row["seconds"] for row in state["meta"]["history"]]
    assert len(done) == state["epoch"] >= 1
    again = adpf({**env, "env": {**env["env"], "ADPF_CACHE_DIR": str(cache)}}, *command)
    assert again.returncode == 0, again.stderr
    result = json.loads(next(cache.glob("runs/fusion-*/result.json")).read_text())
    assert [len(result["history"][s]) for s in ("attention", "fusion")] == [3, 1]
    seconds = [row["seconds"] for row in result["history"][state["stage"]]]
    assert seconds[:len(done)] == done  # the epochs before the interruption were kept, not trained again


def test_sigterm_while_training_ends_with_status_143_and_no_temporaries(env, slow_data, tmp_path):
    cache = tmp_path / "cache"
    process = start(env, cache, "train", *TINY, "--data", slow_data, "--recipe", "book", "--epochs", "6,1",
                    "--batch-size", "8", "--no-progress")
    checkpoint = wait_for(lambda: next(cache.glob("runs/attention-*/checkpoint.pt"), None), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 143
    assert one_line(err) == (f"adpf train: terminated (SIGTERM); the last checkpoint is {checkpoint}; "
                             "the same command resumes from it")
    assert not temporaries(cache)


def test_sigterm_while_drawing_the_synthetic_faces_leaves_no_temporary_folder(env, tmp_path):
    # once: killed by the signal, leaving a hidden half-drawn folder (641 MB at the default size)
    cache = tmp_path / "cache"
    process = start(env, cache, "train", *TINY, "--data", "synthetic", "--synthetic-n", "60000", "--epochs", "1",
                    "--no-progress")
    drawing = wait_for(lambda: next((p for p in (cache / "data").glob(".*") if is_temporary(p.name)
                                     and (p / "masks.npy").is_file()), None), process)
    time.sleep(0.5)  # drawing (PreparedWriter.__init__, which makes the folder, has returned)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 143 and one_line(err) == "adpf train: terminated (SIGTERM)"
    assert not drawing.exists() and not temporaries(cache) and not list((cache / "data").iterdir())


def test_evaluate_refuses_a_recorded_folder_whose_content_changed(env, tmp_path, capsys):
    # once: a checkpoint of 60 faces evaluated an 8-image folder put at the same path: exit 0, no warning
    from adpf import trained_on
    from adpf.data.prepared import load_prepared

    folder = tmp_path / "faces"
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 60).astype(float), "subject": np.arange(60) // 3})
    write_prepared(folder, rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8), meta, name="tiny")
    options = argparse.Namespace(data=str(folder), synthetic_n=None, test=0.2, val=0.1, split_seed=0, fold=None)
    checkpoint = tiny_checkpoint(tmp_path / "m.pt", meta={"trained_on": trained_on.record(options, load_prepared(folder))})
    assert main(["evaluate", str(checkpoint), "--no-progress"]) == 0
    capsys.readouterr()
    write_prepared(folder, rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), meta[:8], name="tiny", overwrite=True)
    assert main(["evaluate", str(checkpoint), "--no-progress"]) == 2
    assert one_line(capsys.readouterr().err) == (f"adpf evaluate: error: {folder}: its content changed since "
                                                 f"{checkpoint} was trained on it (60 images then, 8 now); pass "
                                                 f"--data {folder} to evaluate on it as it is")
    assert main(["evaluate", str(checkpoint), "--data", str(folder), "--on", "all", "--no-progress"]) == 0


def test_an_impossible_age_in_meta_csv_is_refused(env, tmp_path, capsys):
    # once: a hand-edited age of 1e9 loaded and gave "MAE 125000030"
    folder = tmp_path / "edited"
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 20).astype(float), "subject": np.arange(20) // 2})
    write_prepared(folder, rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), meta, name="tiny")
    table = pd.read_csv(folder / "meta.csv")
    table.loc[3, "age"] = 1e9
    table.to_csv(folder / "meta.csv", index=False)
    assert main(["evaluate", str(tiny_checkpoint(tmp_path / "m.pt")), "--data", str(folder), "--no-progress"]) == 2
    assert one_line(capsys.readouterr().err) == (f"adpf evaluate: error: {folder / 'meta.csv'}: row 3: age 1e+09 is "
                                                 "not a possible age (0..130 years)")
