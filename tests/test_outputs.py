"""What ``adpf predict``, ``adpf evaluate`` and ``adpf export`` will and will not overwrite, checked before
any work; results kept when a name is odd or the run is interrupted; CSV cells a spreadsheet reads
safely (issue 19). In process, on an untrained tiny network and noise photos (--no-align)."""
import csv
import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adpf import photos
from adpf.cli import main
from adpf.photos import COLUMNS
from cli_env import TINY_CONFIG, tiny_checkpoint

HEADER = ",".join(COLUMNS)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def noise_photo(path, seed=0, fmt=None):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path, fmt)
    return path


@pytest.fixture
def album(tmp_path):
    """Three photos in ``photos/`` and a checkpoint."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(["a.jpg", "b.jpg", "c.png"]):
        noise_photo(folder / name, seed=i)
    return {"photos": folder, "checkpoint": tiny_checkpoint(tmp_path / "m.pt"), "root": tmp_path}


def predict(album, *args):
    return main(["predict", *map(str, args), "--checkpoint", str(album["checkpoint"]), "--no-align", "--no-progress"])


def contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- 1. outputs that are inputs or photos ------------------------------------------------------

def test_predict_refuses_to_overwrite_a_photo_before_any_work(album, capsys):
    # once: exit 0, one photo predicted and photos/a.jpg replaced by CSV text (the glob after --csv)
    folder, before = album["photos"], contents(album["photos"])
    a, b, c = (folder / n for n in ("a.jpg", "b.jpg", "c.png"))
    assert predict(album, "--csv", a, b, c) == 2
    assert one_line(capsys.readouterr().err) == (f"adpf predict: error: --csv {a}: exists and is an image, not a CSV "
                                                 "written by adpf predict; refusing to overwrite it (remove it, or "
                                                 "choose another name)")
    assert predict(album, "--json", b, a) == 2
    assert f"--json {b}: exists and is an image" in one_line(capsys.readouterr().err)
    assert predict(album, "--save-patches", a, b) == 2
    assert f"--save-patches {a}: exists and is a file, not a patch figure" in one_line(capsys.readouterr().err)
    assert predict(album, folder, "--csv", folder / "b.jpg") == 2
    captured = capsys.readouterr()
    assert one_line(captured.err) == (f"adpf predict: error: --csv {b}: is an input of this command ({b}); "
                                      "refusing to overwrite it")
    assert captured.out == ""  # before any work: no age printed
    assert contents(folder) == before


def test_predict_replaces_only_its_own_earlier_outputs(album, capsys):
    out = album["root"] / "ages.csv"
    notes = album["root"] / "notes.json"
    notes.write_text('{"mine": 1}')
    assert predict(album, album["photos"], "--json", notes) == 2
    assert "exists and is a file, not a JSON file written by adpf" in one_line(capsys.readouterr().err)
    assert notes.read_text() == '{"mine": 1}'
    figure = album["root"] / "patches.jpg"
    for _ in range(2):  # the second run replaces the first run's CSV, JSON and figure
        assert predict(album, album["photos"], "--csv", out, "--json", album["root"] / "ages.json",
                       "--save-patches", figure) == 0
    assert out.read_text().splitlines()[0] == HEADER and Image.open(figure).size[0] > 50


# --- 2 and 16. export --out ---------------------------------------------------------------------

def test_export_refuses_its_checkpoint_other_files_and_a_wrong_suffix(album, capsys):
    # once: --out run/model.pt replaced the trained model; --out photo.jpg replaced a photo; x.onnx accepted
    checkpoint, photo = album["checkpoint"], album["photos"] / "a.jpg"
    saved, picture = checkpoint.read_bytes(), photo.read_bytes()
    export = ["export", str(checkpoint), "--format", "torchscript", "--check", "2", "--out"]
    assert main([*export, str(checkpoint)]) == 2
    assert one_line(capsys.readouterr().err) == (f"adpf export: error: --out {checkpoint}: is an input of this "
                                                 f"command ({checkpoint}); refusing to overwrite it")
    assert main([*export, str(checkpoint), "--force"]) == 2
    assert "is an input of this command" in one_line(capsys.readouterr().err)
    assert main([*export, str(photo)]) == 2
    assert one_line(capsys.readouterr().err) == (f"adpf export: error: --out {photo}: TorchScript exports are .pt "
                                                 "or .pth or .ts files")
    assert main([*export, str(album["root"] / "x.onnx")]) == 2
    assert one_line(capsys.readouterr().err).endswith("x.onnx: TorchScript exports are .pt or .pth or .ts files")
    other = album["root"] / "other.pt"
    other.write_bytes(saved)  # a checkpoint, not an export
    assert main([*export, str(other)]) == 2
    assert "exists and is a file, not an earlier adpf export" in one_line(capsys.readouterr().err)
    assert checkpoint.read_bytes() == saved == other.read_bytes() and photo.read_bytes() == picture
    out = album["root"] / "model.ts"
    old = os.umask(0o022)
    try:
        assert main([*export, str(out)]) == 0
        assert main([*export, str(out)]) == 0  # an earlier export is replaced
        assert main([*export, str(other), "--force"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # once: 0600 (mkstemp's)
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2  # once: "damaged (torch: RuntimeError)"
    assert one_line(capsys.readouterr().err) == (f"adpf evaluate: error: checkpoint {out}: cannot be read: a "
                                                 "TorchScript file (as adpf export writes), not a checkpoint: give "
                                                 "the checkpoint it came from")
    zero = album["root"] / "zero.pt"
    zero.symlink_to("/dev/zero")
    assert main(["evaluate", str(zero)]) == 2  # once: "no such file"
    assert one_line(capsys.readouterr().err).endswith(f"checkpoint {zero}: not a regular file (a device, a pipe or "
                                                      "a folder)")
    assert not list(album["root"].glob(".*tmp*"))


def test_export_of_a_nan_model_blames_the_model(album, capsys):
    # once: "the torchscript export gives ages up to nan years away from the PyTorch model's"
    torch.manual_seed(0)
    from adpf.networks import build_model

    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in build_model(TINY_CONFIG).state_dict().items()}
    nan = tiny_checkpoint(album["root"] / "nan.pt", model=state)
    assert main(["export", str(nan), "--format", "torchscript", "--out", str(album["root"] / "e.pt")]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"adpf export: error: {nan}: the model's output is not finite") and "export gives" not in line


# --- 3. names that are not UTF-8 ----------------------------------------------------------------

def test_a_name_that_is_not_utf8_keeps_every_row(album, capsys):
    # once: every age printed, then "'utf-8' codec can't encode characters", exit 2, no CSV nor JSON
    odd = album["photos"] / os.fsdecode(b"bad\xff\xfe.png")
    noise_photo(odd, seed=5)
    csv_out, json_out = album["root"] / "ages.csv", album["root"] / "ages.json"
    assert predict(album, album["photos"], "--csv", csv_out, "--json", json_out) == 0
    with open(csv_out, newline="", encoding="utf-8") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    assert len(files) == 4 and str(album["photos"] / "bad\\xff\\xfe.png") in files
    assert [r["file"] for r in json.loads(json_out.read_text())] == files
    assert "bad\\xff\\xfe.png: " in capsys.readouterr().out


# --- 4. Ctrl-C ----------------------------------------------------------------------------------

def test_ctrl_c_writes_the_rows_predicted_so_far(album, capsys, monkeypatch):
    # once: 64 faces printed, no CSV written
    prepare, calls = photos.prepare_faces, []

    def interrupted_at_the_third(path, *args, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return prepare(path, *args, **kw)

    monkeypatch.setattr(photos, "prepare_faces", interrupted_at_the_third)
    out = album["root"] / "ages.csv"
    assert predict(album, album["photos"], "--csv", out, "--batch-size", "1") == 130
    assert one_line(capsys.readouterr().err) == (f"adpf predict: interrupted; the 2 rows predicted so far are "
                                                 f"written to {out}")
    lines = out.read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 3 and lines[1].startswith(str(album["photos"] / "a.jpg"))


# --- 5. links, pipes, standard output -----------------------------------------------------------

def test_csv_and_json_write_through_links_pipes_and_dash(album, capsys):
    # once: the link became a file (target unchanged), the pipe became a file, '-' a file named '-'
    target = album["root"] / "kept" / "ages.csv"
    target.parent.mkdir()
    target.write_text(HEADER + "\n")
    link = album["root"] / "link.csv"
    link.symlink_to(target)
    assert predict(album, album["photos"], "--csv", link) == 0
    assert link.is_symlink() and len(target.read_text().splitlines()) == 4
    fifo = album["root"] / "pipe.json"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    assert predict(album, album["photos"], "--json", fifo) == 0
    reader.join(timeout=60)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and len(json.loads(got[0])) == 3
    capsys.readouterr()
    assert predict(album, album["photos"], "--csv", "-") == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == HEADER and len(captured.out.splitlines()) == 4
    assert captured.err.count(" years") == 3 and not (album["root"] / "-").exists()
    assert predict(album, album["photos"], "--csv", "-", "--json", "-") == 2


# --- 6 and 7. cells a spreadsheet reads safely --------------------------------------------------

def test_csv_neutralises_formulas_and_quotes_carriage_returns(album, monkeypatch):
    # once: '=cmd|...' written verbatim (a spreadsheet runs it); 'a\rb' unquoted: 12 rows read for 11 faces
    monkeypatch.chdir(album["photos"])
    names = ["=cmd|' -C calc'!A0.png", "@sum.png", "+1.png", "a\rb.png"]
    for i, name in enumerate(names):
        noise_photo(Path(name), seed=i, fmt="PNG")
    assert predict(album, *names, "--csv", "out.csv") == 0
    with open("out.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["'=cmd|' -C calc'!A0.png", "'@sum.png", "'+1.png", "a\rb.png"]


# --- 14 and 17. lists ---------------------------------------------------------------------------

def test_a_list_is_read_line_by_line_and_may_name_folders(album, capsys):
    # once: /dev/zero read whole into memory (MemoryError traceback); a folder in a list was "not an image"
    endless = album["root"] / "endless.txt"
    endless.write_bytes(b"x" * 100_000)
    assert predict(album, "--list", endless) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"adpf predict: {endless}: not a list of photos (line 1 is longer than 4096 bytes)"
    assert predict(album, "--list", "/dev/zero") == 2
    assert "/dev/zero: not a list of photos" in capsys.readouterr().err
    listed = album["root"] / "list.txt"
    listed.write_text("photos\n")
    assert predict(album, "--list", listed) == 0
    assert capsys.readouterr().out.count(" years") == 3


def test_align_and_no_align_together_are_refused(album, capsys):
    assert main(["predict", str(album["photos"]), "--checkpoint", str(album["checkpoint"]), "--align", "dlib",
                 "--no-align"]) == 2
    assert one_line(capsys.readouterr().err) == ("adpf predict: error: --no-align and --align dlib: give one of them "
                                                 "(--no-align is --align resize)")


def test_a_missing_dlib_is_said_once_with_exit_2_before_any_photo(album, capsys, monkeypatch):
    # once: every photo got its own "skipped: face alignment needs dlib" line, and the exit was 1
    import sys

    from adpf.checkpoint import load_model
    from adpf.data import align

    folder = album["root"] / "large"  # photos large enough for the detector (noise_photo's are not)
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    align._models.cache_clear()  # forget a dlib loaded by an earlier test
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
    try:
        status = main(["predict", str(folder), "--checkpoint", str(album["checkpoint"]), "--align", "dlib",
                       "--no-progress"])
        captured = capsys.readouterr()
        model = load_model(album["checkpoint"], "cpu")
        with pytest.raises(align.AlignerMissingError):  # the library raises it too, not one row per photo
            list(photos.predict_photos(model, sorted(folder.iterdir()), "dlib", progress=True))
    finally:
        align._models.cache_clear()
    assert status == 2 and captured.out == ""
    assert one_line(captured.err).startswith("adpf predict: error: face alignment needs dlib, which is not installed")
    assert "--no-align" in captured.err  # the way on without dlib


# --- 15. every output checked before the work ---------------------------------------------------

def test_outputs_nobody_can_write_are_refused_first_even_as_root(album, capsys, tmp_path, monkeypatch):
    # once: os.access said yes to root, so the work ran and the write failed after it
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path / "cache"))
    assert predict(album, album["photos"], "--csv", "/proc/nope/a.csv") == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).startswith("adpf predict: error: --csv /proc/nope/a.csv: cannot write into /proc")
    assert captured.out == ""
    assert main(["evaluate", str(album["checkpoint"]), "--json", "/proc/x.json"]) == 2
    assert one_line(capsys.readouterr().err).startswith("adpf evaluate: error: --json /proc/x.json: cannot write")
    assert main(["train", "--data", str(tmp_path / "nodata"), "--out", "/proc/nope/x"]) == 2
    assert "--out /proc/nope/x: cannot write into /proc" in one_line(capsys.readouterr().err)


# --- 9. ages and the batch ----------------------------------------------------------------------

def test_ages_agree_across_batch_sizes_within_the_stated_bound(album, capsys):
    # the bound is documented (ages differed by up to 0.06 years between batch sizes 1, 3 and 8,
    # with nothing said): float sums differ by ~1e-7 and can move a box by a pixel at its threshold
    from adpf.checkpoint import load_model

    model = load_model(album["checkpoint"], "cpu")
    paths = sorted(album["photos"].iterdir()) * 3
    ages = {b: [r.age for r in photos.predict_photos(model, paths, "resize", batch_size=b, progress=True)]
            for b in (1, 3, 8)}
    assert np.abs(np.array(ages[1]) - np.array(ages[3])).max() < 0.05
    assert np.abs(np.array(ages[1]) - np.array(ages[8])).max() < 0.05
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "differ by a few hundredths of a year between --batch-size" in " ".join(capsys.readouterr().out.split())


def test_an_export_traced_twice_in_one_process_is_still_recognised(tmp_path):
    # TorchScript mangles the class's name on a second trace in the same process
    # (code/__torch__/adpf/export/___torch_mangle_N.py); the check must still know it
    import torch

    from adpf.config import get_preset
    from adpf.export import AgeModel
    from adpf.networks import build_model
    from adpf.outputs import is_export_output

    config = get_preset("cpu", image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3,
                        key_channels=4, value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8),
                        patch_size=8, patch_channels=3, age_max=9, variant="adpf")
    paths = []
    for i in range(2):
        traced = torch.jit.trace(AgeModel(build_model(config).eval()), (torch.rand(1, 3, 16, 16),), check_trace=False)
        paths.append(tmp_path / f"m{i}.pt")
        torch.jit.save(traced, str(paths[-1]))
    assert all(is_export_output(p) for p in paths)
