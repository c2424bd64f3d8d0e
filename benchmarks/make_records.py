"""Make the book's records (``adpf.experiments.BOOK_RECORDS``) in one command, one process per seed and row group.

Each record's command is run once per seed and group of rows (``--seeds k --rows …`` and a record
file of its own, `GROUPS`), every process with one thread; the parts are then merged
(``experiments.merge_records``) into ``OUT/records/NAME.json``, with the record's own command and
a ``made_by`` that says how. A process stopped by its limit keeps the rows it finished (a record is
written row by row).

- ``--device cuda`` (the default): ``--no-amp`` (float32 as on a CPU; the data on the device), all
  processes side by side on the one card, each under ``--limit`` seconds (default 380: a lent
  machine's time is short). Prepared real-face folders travel as ``carry/*.npz``
  (``benchmarks/device_data.py``) and are unpacked into ``data/`` first. Without ``--only``, the
  recipe alternatives the recipe was chosen against (``SWEEP``) follow on seed 0, each a training
  of its own with its validation curve, into ``OUT/records/recipe-sweep.json``.
- ``--device cpu``: ``--jobs`` processes at a time (default: one per core), no time limit. How the
  CPU records were made, now in one command: a CPU gives the same weights whether a seed's rows run
  in one process or apart (tests/test_make_records.py).

    python benchmarks/make_records.py OUT [--device cuda|cpu] [--jobs N] [--limit SECONDS] [--only NAME ...] [--tiny]
    python benchmarks/make_records.py OUT --device cpu --only placed-boxes-synthetic   # then copy
        OUT/records/placed-boxes-synthetic.json to benchmarks/results/

``--tiny`` rehearses on this CPU: every record at 1 + 1 epochs (200 drawn faces), device cpu.
(Named ``gpu_records.py`` until 6 Dec 2026, when it ran on a GPU only.)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adpf.cache import write_json  # noqa: E402
from adpf.experiments import BOOK_RECORDS, merge_records, read_record  # noqa: E402

#: Recipe alternatives measured beside the chosen recipe on UTKFace, seed 0 (changes to `adpf train`).
SWEEP = {
    "cpu recipe, 30 epochs": ["--epochs", "30,30"],
    "AdamW lr 1e-3, decay 0.05, no clipping": ["--set-recipe", "optimizer=adamw", "--set-recipe", "lr=0.001",
                                               "--set-recipe", "weight_decay=0.05", "--set-recipe",
                                               "clip_grad_norm=null"],
}


#: Records beyond the book's: why FusionNet ends where it does on the drawn faces (capacity: a
#: main stream and patch streams twice as wide; resolution: its first stage at full resolution,
#: as AttentionNet's stem; training long enough is the book's record ``converged-synthetic``),
#: each beside the plain CNN given the same change.
EXTRA_RECORDS = {
    "fusion-wide-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                             "--rows 'ADPF,plain CNN' --set fusion_channels=[32,64,64,96,96] --set patch_channels=32 "
                             "--seeds 0 1 2 --record benchmarks/results/fusion-wide-synthetic.json",
    "fusion-fullres-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                                "--rows 'ADPF,plain CNN' --set fusion_stem_stride=1 --seeds 0 1 2 "
                                "--record benchmarks/results/fusion-fullres-synthetic.json",
}
RECORDS = {**BOOK_RECORDS, **EXTRA_RECORDS}

#: How a record's rows are shared out between processes (each seed's rows in these groups), so that
#: no process runs much longer than the others; the rows of a group share what they can (ADPF's
#: stage 1 is AttentionNet alone's, and w/o ranking's).
GROUPS = {
    "ablation-utkface": [["ADPF", "AttentionNet alone"], ["plain CNN", "ResNet-18 (reference)"], ["fixed patches"]],
    "ablation-synthetic": [["ADPF", "AttentionNet alone", "ADPF w/o ranking"], ["ADPF w/SA"],
                           ["ADPF w/o diversity loss"], ["plain CNN", "fixed patches", "ResNet-18 (reference)"]],
    "heads-synthetic": [["1", "2", "3"], ["5", "6"]],
    "fusion-wide-synthetic": [["ADPF", "plain CNN"]],
    "converged-synthetic": [["ADPF", "AttentionNet alone"], ["plain CNN", "fixed patches"]],
    "longer-utkface": [["ADPF", "AttentionNet alone"], ["plain CNN", "fixed patches"]],
    "qk-init-utkface": [["ADPF", "AttentionNet alone"]],
    "placed-boxes-utkface": [["ADPF", "ADPF (placed boxes)"]],
    "placed-boxes-synthetic": [["ADPF", "ADPF (placed boxes)", "AttentionNet alone"], ["fixed patches"]],
    "converged-fullres-synthetic": [["ADPF"], ["plain CNN", "fixed patches"]],
    "fusion-fullres-synthetic": [["ADPF", "plain CNN"]],
    "adamw-synthetic": [["ADPF", "AttentionNet alone"], ["plain CNN", "fixed patches"]],
    "adamw-utkface": [["ADPF", "AttentionNet alone"]],
    "main-stream-synthetic": [["ADPF", "ADPF (placed boxes)", "AttentionNet alone"], ["plain CNN", "fixed patches"]],
    "main-stream-utkface": [["ADPF", "AttentionNet alone"], ["plain CNN"], ["ADPF (placed boxes)"]],
    "main-stream-ablation-synthetic": [["ADPF", "AttentionNet alone", "ADPF w/o ranking"], ["ADPF w/SA"],
                                       ["ADPF w/o diversity loss"],
                                       ["plain CNN", "fixed patches", "ResNet-18 (reference)"]],
    "crop-scale-synthetic": [["ADPF", "AttentionNet alone"], ["plain CNN"]],
    "patch-dropout-synthetic": [["ADPF"]],
    "box-jitter-synthetic": [["ADPF"]],
    "main-stream-long-synthetic": [["ADPF"]],
    "patch-dropout-long-synthetic": [["ADPF"]],
    "patch-dropout-utkface": [["ADPF"]],
    "main-stream-heads-synthetic": [["1", "2", "3"], ["5", "6"]],
    "no-diversity-synthetic": [["AttentionNet alone"]],
    **{f"diversity-{weight}-synthetic": [["AttentionNet alone"]] for weight in ("0.1", "0.3", "1")},
}


def _take(argv: list[str], option: str) -> list[str]:
    """The values after ``option`` (up to the next option), removed from ``argv``."""
    at = argv.index(option)
    end = next((i for i in range(at + 1, len(argv)) if argv[i].startswith("--")), len(argv))
    values = argv[at + 1:end]
    del argv[at:end]
    return values


def device_options(device: str) -> list[str]:
    """The options every training gets on ``device``: float32 (``--no-amp``) on CUDA, as on a CPU."""
    return ["--device", device] + (["--no-amp"] if device == "cuda" else [])


def seed_commands(name: str, out: Path, tiny: bool, device: str = "cuda") -> list[tuple[str, list[str]]]:
    """(log name, argv) for each seed and row group of one record's command, on ``device``."""
    argv = shlex.split(RECORDS[name])[1:]  # without "adpf"
    seeds = _take(argv, "--seeds")
    _take(argv, "--record")
    option = "--heads-list" if argv[1] == "heads" else "--rows"
    if option in argv:
        _take(argv, option)
    if tiny:
        for dropped in ("--epochs", "--synthetic-n"):
            if dropped in argv:
                _take(argv, dropped)
        argv += ["--device", "cpu", "--epochs", "1,1", "--synthetic-n", "200"]
    else:
        argv += device_options(device)
    commands = []
    for seed in seeds:
        for j, group in enumerate(GROUPS[name]):
            record = out / "parts" / f"{name}-seed{seed}-{j}.json"
            commands.append((f"{name}-seed{seed}-{j}",
                             [sys.executable, "-m", "adpf.cli", *argv, option, ",".join(group), "--seeds", seed,
                              "--record", str(record), "--no-progress"]))
    return commands


def sweep_commands(out: Path, tiny: bool, device: str = "cuda") -> list[tuple[str, list[str]]]:
    data = ["--data", "data/utkface-64"]
    base = ["--recipe", "cpu", "--seed", "0", "--no-progress"]
    extra = ["--device", "cpu", "--epochs", "1,1"] if tiny else device_options(device)
    commands = []
    for i, changes in enumerate(SWEEP.values()):
        for variant in ("attention_only", "plain_cnn"):
            run = out / "parts" / f"sweep{i}-{variant}"
            # the rehearsal's --epochs comes last, so it wins over a change's
            commands.append((f"sweep{i}-{variant}", [sys.executable, "-m", "adpf.cli", "train", "--variant", variant,
                                                     *data, *base, *changes, *extra, "--out", str(run)]))
    return commands


def run_jobs(jobs: list[tuple[str, list[str], int]], logs: Path, limit: float | None, parallel: int,
             env: dict) -> dict[str, int]:
    """Run (label, argv, niceness) jobs, at most ``parallel`` at a time in the order given, each under
    ``limit`` seconds (None: none), its output in ``logs/LABEL.log``; {label: exit status}."""
    start, pending, running, status = time.time(), list(jobs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            label, argv, niceness = pending.pop(0)
            limited = (["timeout", "-k", "5", str(int(limit))] if limit else []) + ["nice", "-n", str(niceness), *argv]
            log = open(logs / f"{label}.log", "w")
            running.append((label, subprocess.Popen(limited, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                            log))
        time.sleep(0.2)
        for item in [r for r in running if r[1].poll() is not None]:
            label, proc, log = item
            log.close()
            running.remove(item)
            status[label] = proc.returncode
            print(f"{label}: exit {status[label]} after {time.time() - start:.0f} s", flush=True)
    return status


def unpack_carried() -> None:
    for packed in sorted((ROOT / "carry").glob("*.npz")):
        target = ROOT / "data" / packed.stem
        if not target.exists():
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_data.py"), "unpack", str(packed),
                            str(target)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--jobs", type=int, help="processes at a time (default: all on cuda, one per core on cpu)")
    parser.add_argument("--limit", type=float, help="seconds every process may run (default: 380 on cuda, none on cpu)")
    parser.add_argument("--only", nargs="+", choices=list(RECORDS) + ["sweep"])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    device = "cpu" if args.tiny else args.device
    limit = args.limit if args.limit is not None else (380 if device == "cuda" else None)
    (args.out / "parts").mkdir(parents=True, exist_ok=True)
    (args.out / "records").mkdir(parents=True, exist_ok=True)
    unpack_carried()
    names = args.only or [*RECORDS, "sweep"]
    # the book's records first; the others yield the CPU to them (nice 10)
    jobs = [(label, argv, 0) for name in sorted(names, key=lambda n: n not in BOOK_RECORDS) if name != "sweep"
            for label, argv in seed_commands(name, args.out, args.tiny, device)]
    jobs = [(label, argv, 10 if label.split("-seed")[0] in EXTRA_RECORDS else 0) for label, argv, _ in jobs]
    if "sweep" in names:
        jobs += [(label, argv, 10) for label, argv in sweep_commands(args.out, args.tiny, device)]
    parallel = args.jobs or (len(jobs) if device == "cuda" else os.cpu_count() or 1)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    # the drawn faces once, before the processes that share them start
    subprocess.run([sys.executable, "-c", "from adpf.data.prepared import default_dataset as d; "
                    f"d(image_size=64, n={200 if args.tiny else 3000}, progress=False)"], env=env, check=True, cwd=ROOT)
    status = run_jobs(jobs, args.out / "parts", limit, parallel, env)
    for name in names:
        if name == "sweep":
            continue
        parts = [read_record(p) for p in sorted((args.out / "parts").glob(f"{name}-seed*.json"))]
        if parts:
            merged = merge_records(parts, RECORDS[name])
            merged["made_by"] = (f"benchmarks/make_records.py --device {device}{' --tiny (rehearsal)' if args.tiny else ''}: "
                                 f"one process per seed and row group, {min(parallel, len(jobs))} at a time, one "
                                 f"thread each, merged by experiments.merge_records")
            write_json(args.out / "records" / f"{name}.json", merged)
            print(f"{name}: {len(merged['rows'])} rows, seeds {merged['seeds']}", flush=True)
    sweep = {}
    for i, label in enumerate(SWEEP):
        for variant in ("attention_only", "plain_cnn"):
            result = args.out / "parts" / f"sweep{i}-{variant}" / "result.json"
            if result.is_file():
                r = json.loads(result.read_text())
                sweep[f"{label} / {variant}"] = {"test_mae": r["metrics"]["test"]["mae"],
                                                 "val_mae": r["metrics"]["val"]["mae"], "history": r["history"],
                                                 "recipe": r["recipe"], "best_epochs": r.get("best_epochs")}
    if sweep:
        write_json(args.out / "records" / "recipe-sweep.json", sweep)
    print(json.dumps(status), flush=True)
    failed = sorted(label for label, code in status.items() if code)
    if failed:
        print(f"{len(failed)} of {len(status)} processes failed (their logs in {args.out / 'parts'}): "
              + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
