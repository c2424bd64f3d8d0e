"""What users of the ``adpf`` command expect, end to end in subprocesses on tiny data: ``--version``,
progress bars, a checkpoint that remembers its data, batch prediction to CSV/JSON, per-age-band
metrics and calibration, export, and the paper's protocols fold by fold."""
import os
import subprocess
import sys
from pathlib import Path

import adpf

REPO = Path(__file__).resolve().parents[1]


def run_adpf(*args, env=None, cwd=None, timeout=300):
    variables = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                 "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run([sys.executable, "-m", "adpf.cli", *map(str, args)], env=variables, cwd=cwd,
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout)


def test_version():
    done = run_adpf("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"adpf {adpf.__version__}"
