"""The evaluation protocols of the paper's benchmarks, as index splits.

Every function takes the per-image labels (a prepared set's ``meta`` or a reader's frame:
``subject`` and, where needed, ``race``/``gender``) and returns `Split`s of row indices.
All splits are subject-exclusive (no person is on both sides) and deterministic by seed.

=====================  =========================================================
MORPH II Setting I     random 80/20, 20 partitions (`morph_setting1`)
MORPH II Setting II    S1/S2/S3, Black:White 1:1, Female:Male 1:3 in S1 and S2;
                       train S1 test S2+S3, train S2 test S1+S3 (`morph_setting2`)
MORPH II Setting III   White subjects, 5-fold cross-validation (`morph_setting3`)
FG-NET                 leave one person out (`leave_one_person_out`)
CACD                   1,800 / 120 / 80 celebrities for train / val / test (`cacd_split`)
any set                random train/val/test fractions by subject (`subject_split`)
=====================  =========================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Split:
    """Row indices of one train/(val)/test partition."""

    name: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray = field(default_factory=lambda: _EMPTY)

    def __repr__(self) -> str:
        return f"Split({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)})"


def _subjects(labels) -> np.ndarray:
    subjects = labels["subject"] if isinstance(labels, pd.DataFrame) else labels
    subjects = np.asarray(subjects)
    if subjects.ndim != 1 or len(subjects) == 0:
        raise ValueError("need a non-empty 1-D array of subjects (or a frame with a 'subject' column)")
    return subjects


def _rows(subjects: np.ndarray, chosen) -> np.ndarray:
    return np.flatnonzero(np.isin(subjects, np.asarray(list(chosen), dtype=subjects.dtype)))


def _fill(subject_ids: np.ndarray, sizes: pd.Series, targets: list[float]) -> list[list]:
    """Deal subjects (in the given order) into groups until each group holds about its
    target number of images; the last group takes whatever is left."""
    sizes = sizes.to_dict()
    groups: list[list] = [[] for _ in targets]
    counts = [0] * len(targets)
    g = 0
    for s in subject_ids:
        while g < len(targets) - 1 and counts[g] >= targets[g]:
            g += 1
        groups[g].append(s)
        counts[g] += sizes[s]
    return groups


def subject_split(labels, train: float = 0.8, val: float = 0.0, test: float = 0.2,
                  seed: int = 0, name: str = "random") -> Split:
    """Shuffle the subjects and deal them into test, val, then train until each holds about
    its fraction of the images (fractions are normalised to sum to 1)."""
    subjects = _subjects(labels)
    if min(train, val, test) < 0 or train <= 0 or train + val + test <= 0:
        raise ValueError(f"fractions must be >= 0 with train > 0, got {train}, {val}, {test}")
    total = train + val + test
    sizes = pd.Series(subjects).value_counts()
    order = np.random.default_rng(seed).permutation(np.sort(sizes.index.to_numpy()))
    n = len(subjects)
    te, va, tr = _fill(order, sizes, [n * test / total, n * val / total, np.inf])
    return Split(f"{name}-seed{seed}", _rows(subjects, tr), _rows(subjects, te), _rows(subjects, va))


def kfold_subjects(labels, k: int = 5, seed: int = 0, name: str = "fold") -> list[Split]:
    """k folds of shuffled subjects balanced by image count; fold i tests on group i and
    trains on the others."""
    subjects = _subjects(labels)
    sizes = pd.Series(subjects).value_counts()
    if len(sizes) < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} subjects, got {len(sizes)}")
    order = np.random.default_rng(seed).permutation(np.sort(sizes.index.to_numpy()))
    groups, counts, size = [[] for _ in range(k)], np.zeros(k), sizes.to_dict()
    for s in order:
        g = int(np.argmin(counts))
        groups[g].append(s)
        counts[g] += size[s]
    folds = []
    for i in range(k):
        test = _rows(subjects, groups[i])
        folds.append(Split(f"{name}{i + 1}of{k}", np.setdiff1d(np.arange(len(subjects)), test), test))
    return folds


def morph_setting1(labels, partitions: int = 20) -> list[Split]:
    """MORPH II Setting I: 80% of the images for training, 20% for testing, no subject on
    both sides; ``partitions`` random partitions (seeds 0..partitions-1)."""
    return [subject_split(labels, 0.8, 0.0, 0.2, seed=s, name="morph-setting1") for s in range(partitions)]


_LABEL_CODES = {"b": "black", "w": "white", "a": "asian", "h": "hispanic", "o": "other", "m": "male", "f": "female"}


def _person_labels(meta: pd.DataFrame, column: str) -> pd.Series:
    """Each subject's label, lower case with MORPH's letter codes spelled out (its most
    frequent label, should a subject's rows disagree)."""
    if column not in meta.columns:
        raise ValueError(f"MORPH II Setting II/III need a {column!r} column (read MORPH II with its album-2 CSV)")
    values = meta[column].astype(str).str.strip().str.lower().replace(_LABEL_CODES)
    counts = pd.DataFrame({"subject": meta["subject"].to_numpy(), "label": values.to_numpy()}).value_counts()
    first = counts.reset_index().drop_duplicates("subject")  # value_counts sorts by count, descending
    return pd.Series(first["label"].to_numpy(), index=first["subject"].to_numpy())


def morph_subsets(meta: pd.DataFrame, seed: int = 0, subset_size: int | None = None) -> list[np.ndarray]:
    """The S1, S2, S3 row sets of MORPH II Setting II.

    S1 and S2 each hold ``subset_size`` images of Black and White subjects in the ratios
    Black:White = 1:1 and Female:Male = 1:3 (Guo and Mu's protocol; the paper's text says
    "Male and Female 1:3", which MORPH II, mostly men, cannot supply). S3 holds everyone else.
    ``subset_size`` defaults to the largest size both subsets can have (about 10,500 on
    the full MORPH II; cells are filled subject by subject, so sizes are approximate).
    """
    race, gender = _person_labels(meta, "race"), _person_labels(meta, "gender")
    sizes = meta["subject"].value_counts()
    cells = {(r, g): share for r in ("black", "white") for g, share in (("female", 1 / 8), ("male", 3 / 8))}
    people = {c: np.sort(race.index[(race == c[0]) & (gender == c[1])].to_numpy()) for c in cells}
    available = {c: sizes[people[c]].sum() for c in cells}
    largest = min(available[c] / (2 * share) for c, share in cells.items())
    if subset_size is None:
        subset_size = int(0.98 * largest)  # the slack absorbs subjects with many images
    if subset_size <= 0 or subset_size > largest:
        raise ValueError(f"S1 and S2 can hold at most {int(largest)} images each here, asked {subset_size}")
    rng = np.random.default_rng(seed)
    s1, s2 = [], []
    for c, share in cells.items():
        g1, g2, _ = _fill(rng.permutation(people[c]), sizes, [subset_size * share] * 2 + [np.inf])
        s1 += g1
        s2 += g2
    subjects = meta["subject"].to_numpy()
    r1, r2 = _rows(subjects, s1), _rows(subjects, s2)
    return [r1, r2, np.setdiff1d(np.arange(len(meta)), np.concatenate([r1, r2]))]


def morph_setting2(meta: pd.DataFrame, seed: int = 0, subset_size: int | None = None) -> list[Split]:
    """MORPH II Setting II: train on S1, test on S2+S3; train on S2, test on S1+S3
    (`morph_subsets`). The paper also reports the average of the two."""
    s1, s2, s3 = morph_subsets(meta, seed, subset_size)
    return [Split("morph-setting2-S1", s1, np.sort(np.concatenate([s2, s3]))),
            Split("morph-setting2-S2", s2, np.sort(np.concatenate([s1, s3])))]


def morph_setting3(meta: pd.DataFrame, seed: int = 0, images: int | None = 5492, k: int = 5) -> list[Split]:
    """MORPH II Setting III: images of White subjects (the paper uses 5,492 of them, without
    saying which: whole subjects are drawn at random until about ``images`` are reached;
    None takes all), then k-fold subject-exclusive cross-validation (80/20 for k = 5)."""
    race = _person_labels(meta, "race")
    white = np.random.default_rng(seed).permutation(np.sort(race.index[race == "white"].to_numpy()))
    if images is not None:
        sizes = meta["subject"].value_counts()
        white = np.array(_fill(white, sizes, [images, np.inf])[0])
    subjects = meta["subject"].to_numpy()
    rows = _rows(subjects, white)
    if len(rows) == 0:
        raise ValueError("no White subjects in these labels")
    return [Split(f"morph-setting3-{f.name}", rows[f.train], rows[f.test])
            for f in kfold_subjects(subjects[rows], k, seed, name="fold")]


def leave_one_person_out(labels) -> list[Split]:
    """FG-NET's protocol: one split per subject (sorted), testing on that subject's images and
    training on everyone else's."""
    subjects = _subjects(labels)
    everything = np.arange(len(subjects))
    return [Split(f"lopo-{s}", everything[subjects != s], everything[subjects == s]) for s in np.unique(subjects)]


CACD_CELEBRITIES = (1800, 120, 80)


def cacd_split(labels, seed: int = 0, counts: tuple[int, int, int] = CACD_CELEBRITIES) -> Split:
    """CACD: celebrities (subjects) into train / val / test, 1,800 / 120 / 80 of the 2,000.

    If the labels carry a ``split`` column ("train"/"val"/"test" per image, e.g. joined
    from a published list) it is used as given. Otherwise the celebrities are shuffled
    with ``seed``; with fewer than 2,000 celebrities the counts are scaled down (at least
    one each). The paper trains on train or on val and tests on test.
    """
    subjects = _subjects(labels)
    if isinstance(labels, pd.DataFrame) and "split" in labels.columns:
        split = labels["split"].astype(str).str.lower().to_numpy()
        unknown = set(split) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"column 'split' holds {sorted(unknown)}; expected train/val/test")
        leaks = set(subjects[split == "test"]) & set(subjects[split != "test"])
        if leaks:
            raise ValueError(f"column 'split' puts {len(leaks)} celebrities in test and elsewhere, e.g. {sorted(leaks)[0]}")
        return Split("cacd-given", *(np.flatnonzero(split == s) for s in ("train", "test", "val")))
    people = np.random.default_rng(seed).permutation(np.unique(subjects))
    n = len(people)
    if n < 3:
        raise ValueError(f"CACD's split needs at least 3 celebrities, got {n}")
    n_val = max(1, round(n * counts[1] / sum(counts)))
    n_test = max(1, round(n * counts[2] / sum(counts)))
    test, val, train = people[:n_test], people[n_test: n_test + n_val], people[n_test + n_val:]
    return Split(f"cacd-seed{seed}", _rows(subjects, train), _rows(subjects, test), _rows(subjects, val))
