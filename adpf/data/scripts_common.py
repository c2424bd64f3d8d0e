"""What the ``data_scripts/`` have in common: safe archive extraction, the shared command
line, and turning a reader's frame into a prepared folder with a printed summary."""
from __future__ import annotations

import argparse
import contextlib
import lzma
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from adpf.config import ADPFConfig
from adpf.data.align import AlignerMissingError, Markup, align_batch, alignment_info, measure_alignment, require_aligner
from adpf.data.prepared import PreparedWriter, check_replaceable
from adpf.data.readers import DatasetLayoutError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UsageError(ValueError):
    """A script's option has a value it cannot use (the message names the option)."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder, is a link/device, or is
    both a file and a folder."""


def _check_member(archive: Path, name: str, kind: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} points outside the extraction folder; refusing the archive")
    if kind != "file" and kind != "dir":
        raise UnsafeArchiveError(f"{archive}: member {name!r} is a {kind}; refusing the archive")


def _check_members(archive: Path, members: list[tuple[str, str]]) -> None:
    """Each member (name, kind) on its own (`_check_member`), then together: no name may be
    a file and also a folder (of another member), which no folder on disk can hold."""
    for name, kind in members:
        _check_member(archive, name, kind)
    files = {PurePosixPath(name.replace("\\", "/")) for name, kind in members if kind == "file"}
    folders = {parent for name, _ in members for parent in PurePosixPath(name.replace("\\", "/")).parents}
    folders |= {PurePosixPath(name.replace("\\", "/")) for name, kind in members if kind == "dir"}
    clash = sorted(files & folders)
    if clash:
        raise UnsafeArchiveError(f"{archive}: member {str(clash[0])!r} is both a file and a folder; refusing the archive")


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip or tar archive into ``dest`` after checking every member: no absolute
    paths, no ``..``, no links or devices, no name that is both a file and a folder (the whole
    archive is refused otherwise). A damaged or truncated archive is a `DatasetLayoutError`.
    The folder appears only once extraction has finished."""
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                _check_members(archive, [(i.filename, "dir" if i.is_dir() else "link"
                                          if stat.S_ISLNK(i.external_attr >> 16) else "file") for i in infos])
                z.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                _check_members(archive, [(m.name, "file" if m.isfile() else "dir" if m.isdir() else "link"
                                          if m.issym() or m.islnk() else "device or special file") for m in members])
                t.extractall(tmp, filter="data")
        else:
            raise DatasetLayoutError(f"{archive}: not a zip or tar archive")
        os.replace(tmp, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # the disk, not the archive (a bad stream has no errno)
            raise
        raise DatasetLayoutError(f"{archive}: damaged or truncated archive ({type(e).__name__}: {e})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def source_folder(source: str | Path, work_dir: Path) -> Path:
    """The folder to read: ``source`` itself, or the archive ``source`` extracted (once) into
    ``work_dir/extracted``; a lone top-level folder is entered."""
    source = Path(source)
    if source.is_file() and source.name.lower().endswith(ARCHIVE_SUFFIXES):
        dest = work_dir / "extracted"
        source = dest if dest.is_dir() else extract_archive(source, dest)
    if not source.is_dir():
        raise DatasetLayoutError(f"{source}: expected a folder or an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    entries = list(source.iterdir())
    while len(entries) == 1 and entries[0].is_dir():  # an archive's single top folder
        source, entries = entries[0], list(entries[0].iterdir())
    return source


def check_output(out: Path, overwrite: bool) -> None:
    """An existing ``out`` may only be replaced with ``overwrite`` and only if it is a
    prepared folder (`check_replaceable`); raises `FileExistsError` saying why not."""
    if out.exists() or out.is_symlink():
        if not overwrite:
            check_replaceable(out)  # says so first when it is not even a prepared folder
            raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
        check_replaceable(out)


def check_paths(source: Path, out: Path, work: Path | None = None, out_inside_source: bool = True) -> None:
    """Refuse (`FileExistsError`) an ``out`` that is the source or a folder above it (replacing
    it would delete the source), a ``work`` folder inside ``out``, and, unless
    ``out_inside_source``, an ``out`` inside the source folder."""
    src, dst = source.resolve(), out.resolve()
    if dst == src or dst in src.parents:
        raise FileExistsError(f"--out {out} is or contains the source {source}; choose an output folder outside it")
    if not out_inside_source and src in dst.parents:
        raise FileExistsError(f"--out {out} lies inside the source {source}; its files would be read as sources")
    if work is not None and (work.resolve() == dst or dst in work.resolve().parents):
        raise FileExistsError(f"--work-dir {work} lies inside --out {out}; choose a folder outside it")


def common_parser(doc: str, name: str, align_default: bool = True) -> argparse.ArgumentParser:
    """The options every dataset script shares; ``source`` is the folder or archive."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=Path, help="the dataset's folder or archive (.zip, .tar[.gz|.bz2|.xz])")
    p.add_argument("--size", type=int, default=128, help="side of the square output faces (paper 128; cpu preset 64)")
    p.add_argument("--out", type=Path, help=f"output folder (default data/{name}-SIZE)")
    p.add_argument("--work-dir", type=Path,
                   help="extraction and per-image cache, reused to resume (default beside --out: .NAME-work)")
    if align_default:
        p.add_argument("--no-align", dest="align", action="store_false", help="the faces come aligned: only crop square and resize")
    else:
        p.add_argument("--align", action="store_true", help="align the faces with dlib (they come aligned by default)")
    p.add_argument("--limit", type=int, help="prepare only N images, a random sample (seed 0, kept in path order): file names often "
                        "begin with the age, so the first N would be a biased sample")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that adpf prepared earlier (any other folder is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when not on a terminal)")
    p.set_defaults(name=name)
    return p


def check_counts(args: argparse.Namespace, *names: str) -> None:
    """The whole-number options ``names`` (e.g. size, limit, workers) must be at least 1 when
    given; raises `UsageError` naming the option."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: expected a whole number of at least 1")


def _prune(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file (never a file)."""
    if folder.is_dir() and not folder.is_symlink():
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            folder.rmdir()


def run(args: argparse.Namespace, read: Callable[[Path], pd.DataFrame], dataset: str) -> int:
    """Check the options, read, align or resize, write the prepared folder, print the summary.
    Returns the exit status: 0, or 2 with a one-line message on stderr (bad option, wrong
    layout, unsafe or damaged archive, an output it may not replace, dlib missing). A work
    folder this run created is removed again when it failed before filling it."""
    out = args.out or Path("data") / f"{args.name}-{args.size}"
    work = args.work_dir or out.parent / f".{out.name}-work"
    created = not work.exists()
    start = time.perf_counter()
    try:  # nothing is read or written before the output is known to be safe to write
        check_counts(args, "size", "limit", "workers")
        check_paths(args.source, out, work)
        check_output(out, args.overwrite)
        if args.align:
            require_aligner()
        df = read(source_folder(args.source, work))
        _, summary = prepare_frame(df, out, dataset, args.size, args.align, args.workers, work, args.limit,
                                   args.overwrite, progress=not args.quiet, info={"source": str(args.source)})
    except (UsageError, DatasetLayoutError, UnsafeArchiveError, AlignerMissingError, OSError) as e:
        message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else e
        print(f"error: {message}", file=sys.stderr)
        if created:
            _prune(work)
        return 2
    print(summary)
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 0


def measure(paths: list[str], points: Callable[[str], np.ndarray], references: list[str], markup: Markup) -> int:
    """``--measure``: dlib's detection rate and eye error against the reference points
    (``points(file)`` reads one reference file), printed on one line; returns the exit status."""
    try:
        m = measure_alignment(paths, [points(f) for f in references], markup)
    except (ValueError, DatasetLayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"dlib on {m['images']} photos with reference points ({markup}): detection rate {m['detection_rate']:.3f} "
          f"({m['detected']} found, {m['doubtful']} doubtful); eye error / inter-ocular distance: median "
          f"{m['median_eye_error']:.4f}, mean {m['mean_eye_error']:.4f}, max {m['max_eye_error']:.4f}")
    return 0


def run_and_measure(args: argparse.Namespace, read: Callable[[Path], pd.DataFrame], dataset: str,
                    column: str, points: Callable[[str], np.ndarray], markup: Markup, missing: str) -> int:
    """`run`, then with ``args.measure`` `measure` on the prepared photos whose reference file
    (the reader's ``column``) exists; ``missing`` names the expected files when none does."""
    frames = []
    status = run(args, lambda root: frames.append(read(root)) or frames[-1], dataset)
    if status != 0 or not args.measure:
        return status
    df = take_limit(frames[0], args.limit)
    df = df[df[column] != ""]
    if df.empty:
        print(f"error: no {missing} beside the images to measure against", file=sys.stderr)
        return 2
    return measure(df["path"].tolist(), points, df[column].tolist(), markup)


def take_limit(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """``--limit``: ``limit`` rows of ``df`` drawn at random (seed 0) and kept in their order; all without one.
    (The first rows in path order would be biased: UTKFace's names begin with the age.)"""
    if not limit or limit >= len(df):
        return df
    return df.iloc[np.sort(np.random.default_rng(0).choice(len(df), limit, replace=False))]


def prepare_frame(df: pd.DataFrame, out: Path, dataset: str, size: int, align: bool, workers: int | None,
                  work_dir: Path, limit: int | None = None, overwrite: bool = False, progress: bool = True,
                  info: dict | None = None) -> tuple[Path, str]:
    """A reader's frame → aligned (or resized) faces → prepared folder at ``out``.

    Files the reader skipped and files that failed are written to ``out/skipped.csv``. With
    ``align``, meta.csv gains ``faces`` (how many the photo holds; the largest is used) and
    ``align_doubts`` (`adpf.data.align.alignment_doubts`, empty when plausible); info.json
    records how the faces were made (`adpf.data.align.alignment_info`: "alignment", "fill").

    Ages above the model's oldest class (`ADPFConfig.age_max`, 100) are real and kept as
    labelled, and counted (info.json "ages_above_classes"): training's target for them
    (Eq. 12's Gaussian, renormalised over the classes) concentrates on the oldest class, and
    evaluation measures against the true age, so their error shows.
    Returns the folder and a printable summary.
    """
    skipped = list(df.attrs.get("skipped", []))
    found = len(df) + len(skipped)
    df = take_limit(df, limit)
    batch = align_batch(df["path"].tolist(), work_dir / f"{'aligned' if align else 'resized'}-{size}", size,
                        workers=workers, progress=progress, align=align)
    keep = [i for i, o in enumerate(batch.outputs) if o is not None]
    if not keep:
        example = f"; e.g. {batch.failures[0][0]}: {batch.failures[0][2]}" if batch.failures else ""
        raise DatasetLayoutError(f"{dataset}: none of the {len(df)} images could be prepared ({batch.no_face} without "
                                 f"a face, {batch.unreadable} unreadable{example})")
    meta = df.iloc[keep].reset_index(drop=True)
    if align:
        meta["faces"] = [batch.faces[i] for i in keep]
        meta["align_doubts"] = [batch.doubts[i] for i in keep]
    top = ADPFConfig().age_max
    above = int((meta["age"] > top).sum())
    failures = skipped + [(p, f"{kind}: {reason}") for p, kind, reason in batch.failures]
    with PreparedWriter(out, len(keep), size, dataset, overwrite=overwrite) as w:
        for start in range(0, len(keep), 512):
            chunk = [batch.outputs[i] for i in keep[start: start + 512]]
            w.write(start, np.stack([cv2.imread(str(p))[..., ::-1] for p in chunk]))
        pd.DataFrame(failures, columns=["path", "reason"]).to_csv(w.tmp / "skipped.csv", index=False)
        w.finish(meta, {"aligned": align, **alignment_info(align), "skipped": len(failures),
                        "ages_above_classes": above, **(info or {})})
    ages = meta["age"]
    lines = [f"{dataset}: {found} image files found, {len(skipped)} skipped by the reader"
             + (f", a random sample of {len(df)} taken (--limit, seed 0)" if limit else "")]
    lines += [f"  {path}: {reason}" for path, reason in skipped[:5]]
    if len(skipped) > 5:
        lines.append(f"  … and {len(skipped) - 5} more")
    lines += [str(batch),
              f"wrote {out}: {len(meta)} faces {size}x{size}, {meta['subject'].nunique()} subjects, "
              f"ages {ages.min():g}..{ages.max():g} (mean {ages.mean():.1f})"]
    if above:
        lines.append(f"{above} faces aged over {top} (the oldest age class): kept with their true age; training "
                     f"aims them at the oldest class")
    if failures:
        lines.append(f"skipped files and reasons: {out / 'skipped.csv'}")
    return out, "\n".join(lines)
