"""Dataset readers on fabricated layouts and, where present, the shared UTKFace and AAF folders."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from adpf.data.readers import (DatasetLayoutError, read_aaf, read_cacd, read_fgnet, read_folder, read_morph2,
                               read_pts, read_utkface)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
UTK = SHARED / "utkface-crop-part1"
AAF = SHARED / "aaf-wild-sample"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path, format="JPEG")
    return path


def test_fgnet_names_subjects_ages_and_pts(tmp_path):
    for name in ("images/001A02.JPG", "images/001A43a.JPG", "images/082A10.jpg", "images/notes.JPG"):
        _touch(tmp_path / name)
    (tmp_path / "points").mkdir()
    (tmp_path / "points/001a02.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n3.5 4\n5 6\n}\n")
    df = read_fgnet(tmp_path)
    assert df["subject"].tolist() == ["001", "001", "082"]
    assert df["age"].tolist() == [2.0, 43.0, 10.0]
    assert df["pts"].tolist()[0].endswith("001a02.pts") and df["pts"].tolist()[1:] == ["", ""]
    assert [Path(p).name for p, _ in df.attrs["skipped"]] == ["notes.JPG"]
    np.testing.assert_array_equal(read_pts(df["pts"][0]), [[1, 2], [3.5, 4], [5, 6]])


def test_pts_with_wrong_count_names_the_file(tmp_path):
    (tmp_path / "a.pts").write_text("n_points: 4\n{\n1 2\n}\n")
    with pytest.raises(DatasetLayoutError, match=r"a.pts: announces 4 points but holds 1"):
        read_pts(tmp_path / "a.pts")


def test_morph_from_file_names(tmp_path):
    for name in ("Album2/000001_0M17.JPG", "Album2/000001_1M19.JPG", "Album2/123456_00F45.JPG"):
        _touch(tmp_path / name)
    df = read_morph2(tmp_path)
    assert df["subject"].tolist() == ["000001", "000001", "123456"]
    assert df["age"].tolist() == [17.0, 19.0, 45.0]
    assert df["gender"].tolist() == ["male", "male", "female"] and set(df["race"]) == {""}


def test_morph_from_the_album2_csv(tmp_path):
    for name in ("Album2/000001_0M17.JPG", "Album2/000002_0F30.JPG"):
        _touch(tmp_path / name)
    pd.DataFrame({"id_num": ["1", "2", "3", "1"], "age": ["17", "30", "40", "x"], "gender": ["M", "F", "M", "M"],
                  "race": ["B", "W", "H", "B"],
                  "photo": ["Album2/000001_0M17.JPG", "000002_0F30.JPG", "Album2/000003_0M40.JPG",
                            "Album2/000001_0M17.JPG"]}).to_csv(tmp_path / "labels.csv", index=False)
    df = read_morph2(tmp_path, tmp_path / "labels.csv")
    assert df["subject"].tolist() == ["000001", "000002"]
    assert df["race"].tolist() == ["black", "white"] and df["gender"].tolist() == ["male", "female"]
    reasons = [r for _, r in df.attrs["skipped"]]
    assert "labels.csv row 4: image not found" in reasons[0] and "row 5: age 'x' is not a number" in reasons[1]


def test_morph_csv_without_needed_columns_is_named(tmp_path):
    pd.DataFrame({"id": [1], "age": [3]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"bad.csv: missing column\(s\) \['id_num', 'photo'\]"):
        read_morph2(tmp_path, tmp_path / "bad.csv")


def test_cacd_names_and_metadata(tmp_path):
    for name in ("53_Robin_Williams_0001.jpg", "23_Mary_Elizabeth_Winstead_0003.jpg", "24_Mary_Elizabeth_Winstead_0004.jpg"):
        _touch(tmp_path / "CACD2000" / name)
    pd.DataFrame({"name": ["Robin Williams", "Mary Elizabeth Winstead"], "rank": [1, 2]}).to_csv(tmp_path / "m.csv", index=False)
    df = read_cacd(tmp_path, tmp_path / "m.csv")
    assert df["subject"].tolist() == ["Mary_Elizabeth_Winstead", "Mary_Elizabeth_Winstead", "Robin_Williams"]
    assert df["age"].tolist() == [23.0, 24.0, 53.0]
    assert df["rank"].tolist() == ["2", "2", "1"]


def test_utkface_fabricated_names(tmp_path):
    for name in ("25_0_1_20170116174525125.jpg.chip.jpg", "3_1_4_20161219140623097.jpg.chip.jpg",
                 "61_1_20170109142408075.jpg.chip.jpg", "39_1_20170116174525125.jpg.chip.jpg"):
        _touch(tmp_path / name)
    df = read_utkface(tmp_path)
    assert df["age"].tolist() == [25.0, 3.0] and df["gender"].tolist() == ["male", "female"]
    assert df["race"].tolist() == ["black", "other"]
    assert df["subject"].nunique() == 2, "each image is its own subject"
    assert sorted(Path(p).name[:2] for p, _ in df.attrs["skipped"]) == ["39", "61"]


def test_folder_with_csv(tmp_path):
    _touch(tmp_path / "a/x.jpg"), _touch(tmp_path / "y.png")
    pd.DataFrame({"path": ["a/x.jpg", "y.png", "missing.jpg", "y.png"], "age": [30, 40, 50, "?"],
                  "subject": ["p1", "p2", "p3", "p2"], "note": ["n1", "n2", "n3", "n4"]}).to_csv(tmp_path / "l.csv", index=False)
    df = read_folder(tmp_path, tmp_path / "l.csv")
    assert df["subject"].tolist() == ["p1", "p2"] and df["note"].tolist() == ["n1", "n2"]
    assert len(df.attrs["skipped"]) == 2
    pd.DataFrame({"path": ["a/x.jpg"], "age": [3]}).to_csv(tmp_path / "nosubject.csv", index=False)
    assert read_folder(tmp_path, tmp_path / "nosubject.csv")["subject"].tolist() == ["a/x.jpg"]


def test_wrong_layouts_say_what_was_expected(tmp_path):
    _touch(tmp_path / "holiday.jpg")
    with pytest.raises(DatasetLayoutError, match=r"no FG-NET images found; expected NNNAaa\[a-z\].JPG.*holiday.jpg"):
        read_fgnet(tmp_path)
    with pytest.raises(DatasetLayoutError, match="no CACD images found; expected AA_First_Last_NNNN.jpg"):
        read_cacd(tmp_path)
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        read_utkface(tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match="label file not found"):
        read_folder(tmp_path, tmp_path / "labels.csv")


@pytest.mark.skipif(not UTK.is_dir(), reason=f"shared UTKFace faces not at {UTK}")
def test_utkface_shared_folder():
    df = read_utkface(UTK)
    skipped = sorted(Path(p).name for p, _ in df.attrs["skipped"])
    assert len(df) + len(skipped) == len(list(UTK.iterdir()))
    assert skipped == ["61_1_20170109142408075.jpg.chip.jpg", "61_3_20170109150557335.jpg.chip.jpg"]
    assert len(df) == 9778 and df["subject"].is_unique
    assert df["age"].between(1, 116).all() and set(df["race"]) == {"white", "black", "asian", "indian", "other"}


@pytest.mark.skipif(not AAF.is_dir(), reason=f"shared AAF sample not at {AAF}")
def test_aaf_shared_sample():
    df = read_aaf(AAF)
    assert len(df) == 320 and (df["keypoints"] != "").all() and not df.attrs["skipped"]
    serial = df["subject"].astype(int)
    assert (df["gender"] == np.where(serial >= 7381, "male", "female")).all()
    assert df["age"].between(2, 80).all()


def test_cacd_metadata_from_the_mat_file(tmp_path):
    from scipy.io import savemat

    for name in ("53_Robin_Williams_0001.jpg", "30_Emma_Watson_0002.jpg"):
        _touch(tmp_path / name)
    savemat(tmp_path / "celebrity2000_meta.mat", {"celebrityData": {
        "name": np.array(["Emma Watson", "Robin Williams", "Nobody Here"], dtype=object),
        "identity": np.array([7, 8, 9]), "rank": np.array([3, 1, 2]), "birth": np.array([1990, 1951, 1900])}})
    df = read_cacd(tmp_path, tmp_path / "celebrity2000_meta.mat")
    assert df["subject"].tolist() == ["Emma_Watson", "Robin_Williams"]
    assert df["identity"].tolist() == [7, 8] and df["rank"].tolist() == [3, 1]


def test_impossible_ages_in_names_and_label_paths_leaving_the_folder_are_skipped(tmp_path):
    for name in ("25_0_1_20170116174525125.jpg.chip.jpg", "999_0_1_20170116174525126.jpg.chip.jpg",
                 "131_1_0_20170116174525127.jpg.chip.jpg", "130_1_0_20170116174525128.jpg.chip.jpg"):
        _touch(tmp_path / "utk" / name)
    df = read_utkface(tmp_path / "utk")
    assert df["age"].tolist() == [130.0, 25.0]
    assert sorted(r for _, r in df.attrs["skipped"]) == [
        "age 131 is not a possible age (0..130 years) (in the file name)",
        "age 999 is not a possible age (0..130 years) (in the file name)"]
    _touch(tmp_path / "m" / "000001_0M17.JPG")
    _touch(tmp_path / "elsewhere" / "000002_0F30.JPG")
    pd.DataFrame({"id_num": [1, 2, 3], "age": [17, 30, 40],
                  "photo": ["000001_0M17.JPG", "../elsewhere/000002_0F30.JPG", "/etc/hostname"]}).to_csv(
        tmp_path / "a2.csv", index=False)
    df = read_morph2(tmp_path / "m", tmp_path / "a2.csv")
    assert df["age"].tolist() == [17.0]
    assert [r for _, r in df.attrs["skipped"]] == [
        f"a2.csv row 3: image not found under {tmp_path / 'm'}",  # looked up by name inside, never outside
        f"a2.csv row 4: image not found under {tmp_path / 'm'}"]
