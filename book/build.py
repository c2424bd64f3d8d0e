"""Execute the book's chapters with papermill, then build the HTML with Jupyter Book.

    python book/build.py                    # train the shared models, execute every chapter, build the HTML
    python book/build.py --only 02          # execute one chapter (number or file stem; repeatable)
    python book/build.py --workers 1        # one chapter at a time (default: 2 at a time)
    python book/build.py --profile paper    # pass profile="paper" to the chapters that declare it
    python book/build.py --param rerun=true # set any parameter of the chapters that declare it
    python book/build.py --no-execute       # rebuild the HTML from the chapters executed before

Each chapter is a MyST Markdown notebook ``book/NN_name.md`` listed in ``_toc.yml``. To add one:
write it with a cell tagged ``parameters``, list it in ``_toc.yml``, glue the numbers its prose
quotes (``myst_nb.glue``), and check them in ``tests/book/``. The build converts it to
``_build/book-src/book/NN_name.ipynb`` (with ``_config.yml``, ``_toc.yml`` and every other
file of ``book/`` copied beside it), executes it there with papermill on the kernel of the
Python running this script, and finally runs ``jupyter-book build`` with warnings as errors
on the staging tree; the HTML lands in ``_build/book-src/_build/html``.

Every model is trained once. Chapters share trained models through the library's
train-or-load cache in ``.adpf-cache/`` (``ADPF_CACHE_DIR``): before a chapter that loads a
model runs (`NEEDS`), the build trains that model in the chapter's setting (``adpf.setting``,
from the chapter's parameters), once, so chapters that do not depend on each other run side by
side (``--workers``, each with its share of the CPU threads) without racing to train the same
model. Chapters that need many trainings read a recorded run instead (``adpf.experiments``).

At the end the build prints the wall time of every step and writes it to
``_build/book-times.json`` (step, seconds, status; total, workers, threads per worker and the
load average at start and end). A cell that raises stops its chapter; the remaining chapters
still run, the HTML is still built (so the error can be read there), and the script exits
with status 1.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import jupytext
import nbformat
import papermill
import yaml
from jupyter_client.manager import KernelManager
from traitlets import default

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's library, installed or not
from adpf.setting import PROFILES, book_setting  # noqa: E402
BOOK = ROOT / "book"
STAGE = ROOT / "_build" / "book-src"
HTML = STAGE / "_build" / "html"
TIMES = ROOT / "_build" / "book-times.json"
CACHE = ROOT / ".adpf-cache"
SKIP = {"build.py", "__pycache__", ".ipynb_checkpoints"}

#: The models a chapter loads from the cache (``config.variant`` in the chapter's setting), so
#: the build trains them before the chapter runs. AttentionNet is trained with its weights kept
#: after every epoch (``Setting.attention_snapshots``, which chapter 7 shows); ADPF's stage 1 is
#: that AttentionNet, so ADPF waits for it.
NEEDS: dict[str, tuple[str, ...]] = {
    "07_training_attention": ("attention_only",),
    "08_patches_fusion": ("attention_only",),
    "09_training_adpf": ("attention_only", "adpf", "plain_cnn"),
    "12_explorer": ("adpf",),
}
TRAINING_NEEDS = {"adpf": ("attention_only",)}
#: The chapter parameters that make up a setting (``adpf.setting.book_setting``).
SETTING_PARAMETERS = ("profile", "n_faces", "epochs", "device", "seed")


def toc_files(toc: Path = ROOT / "_toc.yml") -> list[str]:
    """Every ``file:`` (and the root) of the table of contents, in reading order."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    found.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(toc.read_text()))
    return found


def is_chapter(path: Path) -> bool:
    """A MyST Markdown notebook (it names a kernel), as opposed to a plain Markdown page."""
    return path.suffix == ".md" and "kernelspec" in jupytext.read(path).metadata


def chapters() -> list[Path]:
    """The notebook chapters of the toc, in reading order."""
    paths = []
    for entry in toc_files():
        path = ROOT / f"{entry}.md"
        if not path.exists():
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but {path} does not exist")
        if is_chapter(path):
            paths.append(path)
    return paths


def select(paths: list[Path], only: str) -> Path:
    """The chapter named by a number (``2``, ``02``) or a file stem (``02_self_attention``)."""
    hits = [p for p in paths if p.stem == only or p.stem.split("_")[0].lstrip("0") == only.lstrip("0")]
    if len(hits) != 1:
        raise SystemExit(f"--only {only!r} matches {len(hits)} chapters; choose one of "
                         f"{[p.stem for p in paths]}")
    return hits[0]


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


#: The buttons a page gets once ``_config.yml``'s ``repository.url`` names the project's
#: public repository: Binder (it runs environment.yml and postBuild, which writes each
#: chapter's notebook, and opens the page's notebook in JupyterLab) and a link to the
#: repository. Colab opens only notebooks stored in the repository, and it stores MyST.
LAUNCH_BUTTONS = {"notebook_interface": "jupyterlab", "binderhub_url": "https://mybinder.org"}
REPOSITORY_BUTTONS = {"use_repository_button": True}


def is_repository(url) -> bool:
    """``url`` names a repository the buttons can lead to: ``https://github.com/OWNER/NAME``
    with an owner and a name, and not the placeholder ``OWNER``."""
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)/?", url or "")
    return bool(match) and match.group(1) != "OWNER"


def book_config(config: dict) -> dict:
    """The staged ``_config.yml``: ``config`` with the launch and repository buttons where its
    ``repository.url`` is a repository, and with none (not even the theme's) where it is not."""
    config = json.loads(json.dumps(config))  # a deep copy
    html = config.setdefault("html", {})
    if is_repository(config.get("repository", {}).get("url")):
        config["launch_buttons"] = dict(LAUNCH_BUTTONS)
        html.update(REPOSITORY_BUTTONS)
    else:
        config["launch_buttons"] = {key: "" for key in ("binderhub_url", "jupyterhub_url",
                                                        "colab_url", "deepnote_url")}
        config["launch_buttons"]["thebe"] = False
        html.update({key: False for key in ("use_repository_button", "use_edit_page_button",
                                            "use_issues_button")})
    return config


def stage_tree(chapter_paths: list[Path]) -> None:
    """Copy the config (`book_config`), the toc and every non-chapter file of book/ into the
    staging tree."""
    (STAGE / "book").mkdir(parents=True, exist_ok=True)
    config = book_config(yaml.safe_load((ROOT / "_config.yml").read_text()))
    (STAGE / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    shutil.copy2(ROOT / "_toc.yml", STAGE / "_toc.yml")
    # the book's CSS: Jupyter Book loads every .css file of _static/ beside _config.yml
    shutil.copytree(ROOT / "_static", STAGE / "_static", dirs_exist_ok=True)
    sources = set(chapter_paths)
    for path in sorted(BOOK.rglob("*")):
        rel = path.relative_to(BOOK)
        # a chapter's paired .ipynb (jupytext) is the reader's copy, never the staged one
        if path.is_dir() or path in sources or SKIP & set(rel.parts) or path.suffix == ".ipynb":
            continue
        target = STAGE / "book" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def staged(path: Path) -> Path:
    return STAGE / "book" / f"{path.stem}.ipynb"


def parameters_cell(nb: nbformat.NotebookNode) -> ast.Module | None:
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return ast.parse(cell.source)
    return None


def declared_parameters(nb: nbformat.NotebookNode) -> dict:
    """The names assigned in the cell tagged ``parameters`` (``a = 1``, ``a = b = None``,
    ``a, b = 1, 2``), with their values (None where a value is not a literal)."""
    tree = parameters_cell(nb)
    values = {}
    for node in tree.body if tree else []:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            value = None
        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
            if isinstance(target, ast.Name):
                values[target.id] = value
            elif isinstance(target, ast.Tuple):
                fits = isinstance(value, tuple) and len(value) == len(target.elts)
                parts = value if fits else [None] * len(target.elts)
                values.update({t.id: v for t, v in zip(target.elts, parts) if isinstance(t, ast.Name)})
    return values


def chapter_setting(path: Path, overrides: dict) -> dict:
    """The setting parameters a chapter runs with: its own values, then the build's overrides."""
    declared = declared_parameters(jupytext.read(path))
    return {k: overrides.get(k, declared[k]) for k in SETTING_PARAMETERS if k in declared}


def plan(paths: list[Path], overrides: dict) -> tuple[dict, dict]:
    """The trainings the chapters in ``paths`` wait for, and what each chapter waits for.

    Returns ``trainings``: {training id: (variant, setting parameters, ids it waits for)} and
    ``waits``: {chapter stem: training ids}. Chapters that declare the same setting share a
    training.
    """
    trainings: dict[str, tuple] = {}

    def add(variant: str, setting: dict) -> str:
        tid = f"train {variant} ({', '.join(f'{k}={v!r}' for k, v in setting.items())})"
        if tid not in trainings:
            after = tuple(add(v, setting) for v in TRAINING_NEEDS.get(variant, ()))
            trainings[tid] = (variant, setting, after)
        return tid

    waits = {}
    for path in paths:
        setting = chapter_setting(path, overrides)
        waits[path.stem] = tuple(add(variant, setting) for variant in NEEDS.get(path.stem, ()))
    return trainings, waits


def train_shared(variant: str, setting: dict) -> float:
    """Train (or load) one shared model in a chapter's setting; return the seconds it took."""
    start = time.perf_counter()
    chosen = book_setting(**setting)
    if variant == "attention_only":
        chosen.attention_snapshots()
    else:
        chosen.train(variant)
    return time.perf_counter() - start


class IPCKernelManager(KernelManager):
    """A kernel that talks to its client over Unix sockets instead of TCP ports.

    Chapters execute side by side, and other programs start kernels too: over TCP, a port picked
    as free by one kernel's client can be taken by another's before it binds, and a chapter then
    waits forever for replies that never come (seen: a chapter's kernel and its client both idle).
    Each kernel gets its socket files in a folder of its own (chapters share a working folder,
    where the default relative socket names would collide too); the folder goes with the kernel.
    """

    transport = "ipc"

    @default("ip")
    def _own_socket_folder(self) -> str:
        return str(Path(tempfile.mkdtemp(prefix="adpf-kernel-")) / "ipc")

    def cleanup_resources(self, restart: bool = False) -> None:
        super().cleanup_resources(restart=restart)
        if not restart:
            shutil.rmtree(Path(self.ip).parent, ignore_errors=True)


#: Seconds one cell may run before its chapter fails (a hang becomes an error, not a stuck build).
CELL_TIMEOUT = 1800


def execute(path: Path, overrides: dict) -> float:
    """Execute one chapter into the staging tree; return the seconds it took.

    Only the overrides the chapter declares in its ``parameters`` cell are passed, so a chapter
    run with its defaults carries no injected-parameters cell.
    """
    nb = jupytext.read(path)
    nb.metadata["adpf_build"] = {"source": path.relative_to(ROOT).as_posix(),
                                 "source_sha256": source_hash(path)}
    params = {k: v for k, v in overrides.items() if k in declared_parameters(nb)}
    out = staged(path)
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(nb, str(out), parameters=params, kernel_name="python3",
                               cwd=str(out.parent), progress_bar=False, execution_timeout=CELL_TIMEOUT, start_timeout=300,
                               kernel_manager_class=IPCKernelManager)
    seconds = time.perf_counter() - start
    # widgets need a live kernel: the page shows static figures, so drop the saved widget
    # state (otherwise the HTML loads the widget manager for nothing)
    executed = nbformat.read(out, as_version=4)
    if executed.metadata.pop("widgets", None) is not None:
        nbformat.write(executed, out)
    return seconds


def run_step(kind: str, *args) -> dict:
    """One step of the build in a worker process: a shared training or a chapter."""
    start = time.perf_counter()
    try:
        if kind == "train":
            train_shared(*args)
        else:
            execute(*args)
        return {"status": "ok", "seconds": time.perf_counter() - start}
    except papermill.PapermillExecutionError as err:
        return {"status": "failed", "seconds": time.perf_counter() - start,
                "error": f"cell {err.exec_count}: {err.ename}: {err.evalue}"}
    except Exception as err:  # a failed step is reported; the other steps still run
        return {"status": "failed", "seconds": time.perf_counter() - start,
                "error": f"{type(err).__name__}: {err}"}


def run_steps(trainings: dict, waits: dict, chapter_paths: dict, overrides: dict, workers: int) -> list[dict]:
    """Run the trainings and chapters, ``workers`` at a time, each as soon as what it waits for
    is done (trainings first, then chapters in reading order); return one row per step."""
    pending = {tid: ("train", (variant, setting), after) for tid, (variant, setting, after) in trainings.items()}
    pending.update({stem: ("chapter", (chapter_paths[stem], overrides), waits[stem]) for stem in waits})
    done, rows, running = {}, [], {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        while pending or running:
            for name in list(pending):
                kind, args, after = pending[name]
                if any(done.get(a) == "failed" for a in after):
                    del pending[name]
                    done[name] = "failed"
                    rows.append({"step": name, "kind": kind, "seconds": 0.0, "status": "not run",
                                 "error": f"waited for {[a for a in after if done.get(a) == 'failed']}"})
                    print(f"  {name}: not run (a training it needs failed)", flush=True)
                elif all(done.get(a) == "ok" for a in after) and len(running) < workers:
                    del pending[name]
                    print(f"{name if kind == 'train' else 'executing ' + name} ...", flush=True)
                    running[pool.submit(run_step, kind, *args)] = (name, kind)
            if not running:
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name, kind = running.pop(future)
                try:
                    outcome = future.result()
                except Exception as err:  # the worker itself died (killed, out of memory)
                    outcome = {"status": "failed", "seconds": 0.0, "error": f"{type(err).__name__}: {err}"}
                row = {"step": name, "kind": kind, **outcome}
                done[name] = "ok" if row["status"] == "ok" else "failed"
                rows.append(row)
                detail = f" ({row['error']})" if "error" in row else ""
                print(f"  {name}: {row['status']} in {row['seconds']:.1f} s{detail}", flush=True)
    return rows


def stand_in(path: Path) -> None:
    """An unexecuted copy of a chapter never executed here, so the toc resolves."""
    nb = jupytext.read(path)
    nb.metadata["adpf_build"] = {"source": path.relative_to(ROOT).as_posix(), "source_sha256": None}
    nbformat.write(nb, staged(path))


def is_current(path: Path) -> bool:
    """The staged notebook was executed from the chapter's present source."""
    target = staged(path)
    if not target.exists():
        return False
    meta = nbformat.read(target, as_version=4).metadata.get("adpf_build", {})
    return meta.get("source_sha256") == source_hash(path)


def build_html(strict: bool) -> int:
    """``jupyter-book build`` on the staging tree; with ``strict`` every warning is an error."""
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb if jb.exists() else shutil.which("jupyter-book")), "build", str(STAGE), "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def write_times(rows: list[dict], total: float, workers: int, threads: int, load_start, load_end) -> dict:
    """Print the table of wall times and write it to ``_build/book-times.json``."""
    times = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "total_seconds": total, "workers": workers, "threads_per_worker": threads,
             "cpu_count": os.cpu_count(), "load_average_start": load_start, "load_average_end": load_end,
             "steps": rows}
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    TIMES.write_text(json.dumps(times, indent=1))
    width = max([len(r["step"]) for r in rows] + [10])
    print(f"\n{'step':<{width}}  {'seconds':>8}  status")
    for r in rows:
        print(f"{r['step']:<{width}}  {r['seconds']:>8.1f}  {r['status']}")
    print(f"{'total':<{width}}  {total:>8.1f}  ({total / 60:.1f} min wall, {workers} workers × {threads} threads, "
          f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end)")
    print(f"times: {TIMES}")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="execute only this chapter (number or file stem; repeatable)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="the chapters' profile (adpf.setting.PROFILES)")
    parser.add_argument("--device", help="torch device for the chapters (e.g. cuda)")
    parser.add_argument("--seed", type=int, help="training seed for the chapters")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a parameter of the chapters that declare it (JSON value, else text), "
                             "e.g. --param n_faces=1000 --param rerun=true; repeatable")
    parser.add_argument("--workers", type=int, default=2, help="chapters and trainings run at a time (default: 2)")
    parser.add_argument("--no-execute", action="store_true", help="rebuild the HTML only")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")

    start, load_start = time.perf_counter(), os.getloadavg()
    paths = chapters()
    stage_tree(paths)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    os.environ.setdefault("ADPF_CACHE_DIR", str(CACHE))
    # the workers, their kernels and the trainings share the cores instead of each taking all
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    # the chapters import this checkout's library, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    overrides = {k: v for k, v in {"profile": args.profile, "device": args.device,
                                   "seed": args.seed}.items() if v is not None}
    for item in args.param:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            parser.error(f"--param {item!r}: expected NAME=VALUE")
        try:
            overrides[name] = json.loads(text)
        except json.JSONDecodeError:
            overrides[name] = text

    if args.no_execute:
        todo = []
    elif args.only:
        todo = [select(paths, only) for only in args.only]
    else:
        todo = paths
    trainings, waits = plan(todo, overrides)
    rows = run_steps(trainings, waits, {p.stem: p for p in todo}, overrides, args.workers) if todo else []
    failed = [r["step"] for r in rows if r["kind"] == "chapter" and r["status"] != "ok"]

    stale = [p.stem for p in paths if p not in todo and not is_current(p)]
    for path in paths:
        if not staged(path).exists():
            stand_in(path)
    if stale:
        print(f"not executed from their present source (built without -W): {stale}", flush=True)
    html_start = time.perf_counter()
    status = build_html(strict=not stale)
    rows.append({"step": "HTML (jupyter-book)", "kind": "html", "seconds": time.perf_counter() - html_start,
                 "status": "ok" if status == 0 else f"exit {status}"})
    write_times(rows, time.perf_counter() - start, args.workers, int(os.environ["OMP_NUM_THREADS"]),
                load_start, os.getloadavg())
    if status:
        print(f"jupyter-book build failed with status {status}", flush=True)
    if failed:
        print(f"chapters with a failing cell: {failed}", flush=True)
    print(f"HTML: {HTML / 'index.html'}")
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
