"""benchmarks/make_records.py: every record's rows shared out once, and a record made in parts
(seeds and row groups in processes of their own) equal to the same command run in one process."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_records  # noqa: E402

from adpf.experiments import DEFAULT_ROWS  # noqa: E402


def record_rows(command: str) -> list[str]:
    """The rows (models, or head counts) a record's command trains."""
    argv = shlex.split(command)
    for option in ("--rows", "--heads-list"):
        if option in argv:
            return argv[argv.index(option) + 1].split(",")
    return list(DEFAULT_ROWS)


@pytest.mark.parametrize("name", sorted(make_records.RECORDS))
def test_groups_share_out_every_row_once(name):
    groups = make_records.GROUPS[name]
    flat = [row for group in groups for row in group]
    assert sorted(flat) == sorted(record_rows(make_records.RECORDS[name])), name
    assert len(flat) == len(set(flat)), f"{name}: a row in two groups"


def test_no_group_for_a_record_that_is_not_made():
    assert set(make_records.GROUPS) == set(make_records.RECORDS)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_seed_commands_run_each_seed_and_group_on_the_device(tmp_path, device):
    commands = make_records.seed_commands("placed-boxes-synthetic", tmp_path, tiny=False, device=device)
    groups = make_records.GROUPS["placed-boxes-synthetic"]
    assert len(commands) == 3 * len(groups)
    for (label, argv), (seed, j) in zip(commands, [(s, j) for s in "012" for j in range(len(groups))]):
        assert label == f"placed-boxes-synthetic-seed{seed}-{j}"
        assert argv[argv.index("--seeds") + 1:argv.index("--seeds") + 2] == [seed]
        assert argv[argv.index("--rows") + 1] == ",".join(groups[j])
        assert argv[argv.index("--device") + 1] == device
        assert ("--no-amp" in argv) == (device == "cuda")
        assert argv.count("--seeds") == argv.count("--rows") == argv.count("--record") == 1


def test_run_jobs_keeps_to_its_limit_on_parallel_processes(tmp_path):
    # each job appends its start and end time; never more than two may overlap
    log = tmp_path / "times.txt"
    script = f"import time; open({str(log)!r}, 'a').write(f'{{time.time()}} s\\n'); time.sleep(0.5); " \
             f"open({str(log)!r}, 'a').write(f'{{time.time()}} e\\n')"
    jobs = [(f"job{i}", [sys.executable, "-c", script], 0) for i in range(5)]
    jobs.append(("bad", [sys.executable, "-c", "raise SystemExit(3)"], 0))
    status = make_records.run_jobs(jobs, tmp_path, limit=None, parallel=2, env=dict(os.environ))
    assert status == {**{f"job{i}": 0 for i in range(5)}, "bad": 3}
    events = sorted((float(t), kind) for t, kind in (line.split() for line in log.read_text().splitlines()))
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "s" else -1
        peak = max(peak, running)
    assert peak == 2
    assert (tmp_path / "bad.log").is_file()


def test_a_record_made_in_parts_on_the_cpu_equals_one_process(tmp_path):
    env = {**os.environ, "ADPF_CACHE_DIR": str(tmp_path / "cache-parts"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_records.py"), str(out), "--tiny",
                          "--jobs", "2", "--only", "placed-boxes-synthetic"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    merged = json.loads((out / "records" / "placed-boxes-synthetic.json").read_text())
    assert merged["command"] == make_records.RECORDS["placed-boxes-synthetic"]
    assert merged["seeds"] == [0, 1, 2]
    assert "--device cpu" in merged["made_by"] and "2 at a time" in merged["made_by"]
    rows = {(r["model"], r["seed"]): r for r in merged["rows"]}
    assert set(rows) == {(m, s) for m in record_rows(merged["command"]) for s in range(3)}

    # seed 0 again, every row in one process and another cache: the same test MAE, row by row
    argv = make_records.seed_commands("placed-boxes-synthetic", out, tiny=True)[0][1]
    argv[argv.index("--rows") + 1] = ",".join(record_rows(merged["command"]))
    argv[argv.index("--record") + 1] = str(tmp_path / "one.json")
    env["ADPF_CACHE_DIR"] = str(tmp_path / "cache-one")
    one = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    for row in json.loads((tmp_path / "one.json").read_text())["rows"]:
        assert row["mae"] == rows[(row["model"], 0)]["mae"], row["model"]
