"""Protocol splits: sizes, ratios, determinism, and never a subject on both sides."""
import numpy as np
import pandas as pd
import pytest

from adpf.data.protocols import (Split, cacd_split, kfold_subjects, leave_one_person_out, morph_setting1,
                                 morph_setting2, morph_setting3, morph_subsets, subject_split)


def _morph_like(seed: int, subjects: int = 1500) -> pd.DataFrame:
    """Random MORPH-like labels: mostly Black men, 1..8 images per person."""
    rng = np.random.default_rng(seed)
    race = rng.choice(["B", "W", "A", "H"], subjects, p=[0.77, 0.19, 0.02, 0.02])
    gender = rng.choice(["M", "F"], subjects, p=[0.85, 0.15])
    k = rng.integers(1, 9, subjects)
    ids = rng.permutation(100_000)[:subjects]  # arbitrary ids in no particular order
    return pd.DataFrame({"subject": np.repeat(ids, k), "race": np.repeat(race, k), "gender": np.repeat(gender, k),
                         "age": rng.integers(16, 78, k.sum())})


def _check_exclusive(split: Split, n: int, complete: bool = True):
    """Disjoint rows, disjoint subjects; together all rows when ``complete``."""
    parts = [split.train, split.val, split.test]
    rows = np.concatenate(parts)
    assert len(np.unique(rows)) == len(rows), "a row is in two parts"
    if complete:
        np.testing.assert_array_equal(np.sort(rows), np.arange(n))


def _subjects_of(meta, rows):
    return set(meta["subject"].to_numpy()[rows])


@pytest.mark.parametrize("seed", range(5))
def test_subject_split_is_exclusive_deterministic_and_sized(seed):
    meta = _morph_like(seed)
    s = subject_split(meta, 0.7, 0.1, 0.2, seed=seed)
    _check_exclusive(s, len(meta))
    parts = [_subjects_of(meta, r) for r in (s.train, s.val, s.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    n = len(meta)
    assert abs(len(s.test) - 0.2 * n) <= 8 and abs(len(s.val) - 0.1 * n) <= 8  # at most one person over
    again = subject_split(meta, 0.7, 0.1, 0.2, seed=seed)
    np.testing.assert_array_equal(again.test, s.test)
    assert not np.array_equal(subject_split(meta, 0.7, 0.1, 0.2, seed=seed + 10).test, s.test)


def test_subject_split_accepts_a_plain_array_and_checks_fractions():
    s = subject_split(np.array(["a", "a", "b", "c", "c", "c"]), 0.5, 0.0, 0.5, seed=1)
    _check_exclusive(s, 6)
    with pytest.raises(ValueError, match="fractions"):
        subject_split(np.array([1, 2]), train=0, test=1)


@pytest.mark.parametrize("seed", range(3))
def test_setting1_twenty_partitions(seed):
    meta = _morph_like(seed)
    parts = morph_setting1(meta)
    assert len(parts) == 20 and len({tuple(p.test[:20]) for p in parts}) == 20
    for p in parts:
        _check_exclusive(p, len(meta))
        assert not _subjects_of(meta, p.train) & _subjects_of(meta, p.test)
        assert 0.19 < len(p.test) / len(meta) < 0.21


@pytest.mark.parametrize("seed", range(3))
def test_setting2_ratios_and_exclusivity(seed):
    meta = _morph_like(seed, subjects=3000)
    s1, s2, s3 = morph_subsets(meta, seed=seed)
    _check_exclusive(Split("s", s1, s3, s2), len(meta))
    for s in (s1, s2):
        m = meta.iloc[s]
        assert set(m["race"]) == {"B", "W"}
        races, genders = m["race"].value_counts(), m["gender"].value_counts()
        assert abs(races["B"] / races["W"] - 1) < 0.03
        assert abs(genders["F"] / genders["M"] - 1 / 3) < 0.03
    assert abs(len(s1) - len(s2)) <= 16
    subjects = [_subjects_of(meta, s) for s in (s1, s2, s3)]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    a, b = morph_setting2(meta, seed=seed)
    np.testing.assert_array_equal(a.train, s1)
    np.testing.assert_array_equal(a.test, np.sort(np.concatenate([s2, s3])))
    np.testing.assert_array_equal(b.train, s2)
    np.testing.assert_array_equal(b.test, np.sort(np.concatenate([s1, s3])))


def test_setting2_refuses_impossible_sizes_and_missing_race():
    meta = _morph_like(0)
    with pytest.raises(ValueError, match="can hold at most"):
        morph_subsets(meta, subset_size=10**6)
    with pytest.raises(ValueError, match="need a 'race' column"):
        morph_subsets(meta.drop(columns="race"))


@pytest.mark.parametrize("seed", range(3))
def test_setting3_white_five_fold(seed):
    meta = _morph_like(seed, subjects=3000)
    folds = morph_setting3(meta, seed=seed, images=1500)
    assert len(folds) == 5
    tests = np.concatenate([f.test for f in folds])
    assert len(np.unique(tests)) == len(tests), "every image is tested once"
    assert abs(len(tests) - 1500) <= 8 and set(meta["race"].iloc[tests]) == {"W"}
    for f in folds:
        assert not _subjects_of(meta, f.train) & _subjects_of(meta, f.test)
        np.testing.assert_array_equal(np.sort(np.concatenate([f.train, f.test])), np.sort(tests))
        assert 0.17 < len(f.test) / len(tests) < 0.23
    everyone = morph_setting3(meta, seed=seed, images=None)
    assert sum(len(f.test) for f in everyone) == (meta["race"] == "W").sum()


def test_kfold_needs_enough_subjects():
    with pytest.raises(ValueError, match="at least 5 subjects"):
        kfold_subjects(np.array([1, 1, 2, 3]), k=5)


def test_leave_one_person_out():
    subjects = np.array(["002", "001", "002", "003", "001", "002"])
    folds = leave_one_person_out(subjects)
    assert [f.name for f in folds] == ["lopo-001", "lopo-002", "lopo-003"]
    np.testing.assert_array_equal(folds[0].test, [1, 4])
    np.testing.assert_array_equal(folds[0].train, [0, 2, 3, 5])
    for f in folds:
        _check_exclusive(f, len(subjects))
        assert len(set(subjects[f.test])) == 1 and set(subjects[f.test]).isdisjoint(subjects[f.train])


@pytest.mark.parametrize("seed", range(3))
def test_cacd_by_celebrity(seed):
    rng = np.random.default_rng(seed)
    names = np.array([f"Celebrity_{i}" for i in range(2000)])
    meta = pd.DataFrame({"subject": np.repeat(names, rng.integers(1, 6, 2000))})
    s = cacd_split(meta, seed=seed)
    _check_exclusive(s, len(meta))
    counts = [meta["subject"].iloc[r].nunique() for r in (s.train, s.val, s.test)]
    assert counts == [1800, 120, 80]
    small = cacd_split(meta.iloc[:100], seed=seed)
    assert all(len(r) for r in (small.train, small.val, small.test))


def test_cacd_given_split_is_used_and_checked():
    meta = pd.DataFrame({"subject": ["a", "a", "b", "c"], "split": ["train", "train", "val", "test"]})
    s = cacd_split(meta)
    assert s.name == "cacd-given" and s.train.tolist() == [0, 1] and s.val.tolist() == [2] and s.test.tolist() == [3]
    with pytest.raises(ValueError, match="in test and elsewhere"):
        cacd_split(meta.assign(split=["train", "test", "val", "test"]))
