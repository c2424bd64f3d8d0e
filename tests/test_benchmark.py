"""benchmarks/benchmark.py: a script beside the library that runs on the CPU at tiny sizes and prints
its table (no timing assertions); importing adpf registers nothing with torch."""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "benchmark.py"
SMALLEST = ["--presets", "cpu", "--tiny", "--device", "cpu", "--batch-size", "2", "--warmup", "0",
            "--repeats", "1", "--no-align"]


def load_script():
    """benchmarks/benchmark.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("benchmarks_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT / "benchmarks")  # run from anywhere: it finds the checkout's adpf itself
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_importing_adpf_registers_nothing_with_torch():
    """Every module of the package imported and a model trained a step: torch's FLOP-formula registry is
    as it was, psutil is not imported, and the package has no benchmark module."""
    code = """
import pkgutil, importlib, sys
import torch
from torch.utils.flop_counter import flop_registry
before = dict(flop_registry)
import adpf
names = [m.name for m in pkgutil.walk_packages(adpf.__path__, "adpf.")]
for name in names:
    importlib.import_module(name)
from adpf.config import get_preset
from adpf.networks import build_model
model = build_model(get_preset("cpu"))
model(torch.rand(2, 3, 64, 64)).logits.sum().backward()
assert flop_registry == before, set(flop_registry) ^ set(before)
assert "psutil" not in sys.modules, "psutil imported"
assert "adpf.benchmark" not in names, names
print(len(names), "modules")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[0]) > 10  # the walk did import the package's modules


def test_flop_counter_counts_the_cpu_attention_kernel():
    """The fused heads run SDPA's CPU kernel: its FLOPs are counted as 4·B·H·N²·D forward, 2.5× that backward."""
    benchmark = load_script()
    b, h, n, d = 2, 3, 20, 8
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    forward = benchmark.flops_of(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward == 4 * b * h * n * n * d  # Q Kᵀ and A V, 2 FLOPs per multiply-add
    both = benchmark.flops_of(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both == forward + 10 * b * h * n * n * d  # backward recomputes A, then dV, dA, dQ, dK


def test_benchmark_runs_tiny_and_prints_every_row(tmp_path):
    done = run_script(*SMALLEST, "--out", str(tmp_path / "table.md"), "--json", str(tmp_path / "numbers.json"))
    printed = done.stdout
    assert (tmp_path / "table.md").read_text().strip().endswith(printed.strip().splitlines()[-1])
    for label, *_ in load_script().ROWS:
        line = next(line for line in printed.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert len(cells) == 5
        adpf, plain = cells[0], cells[1]
        if "alignment" in label:
            assert adpf == plain == "—"  # --no-align
        else:
            assert re.fullmatch(r"[0-9.e+-]+", adpf) and re.fullmatch(r"[0-9.e+-]+", plain), line
    numbers = json.loads((tmp_path / "numbers.json").read_text())
    results = numbers["presets"]["cpu"]["results"]
    assert set(results) == {"adpf", "plain attention", "plain_cnn"}
    assert set(results["adpf"]["train"]) == {"attention", "fusion"}
    assert set(results["plain_cnn"]["train"]) == {"single"}
    for case in results.values():
        assert all(rate > 0 for rate in case["train"].values())
        assert case["forward_flops"] > 0
    # the baseline without attention does less arithmetic than either ADPF
    assert results["plain_cnn"]["forward_flops"] < results["plain attention"]["forward_flops"]
    assert results["plain_cnn"]["forward_flops"] < results["adpf"]["forward_flops"]


def test_benchmark_runs_with_cpu_bf16():
    """``--device cpu --bf16`` at the smallest settings exits 0 (it exited 1 for the patch variants)."""
    done = run_script(*SMALLEST, "--bf16")
    assert "bf16 autocast" in done.stdout
    stage2 = next(line for line in done.stdout.splitlines() if line.startswith("| train stage 2"))
    assert float(stage2.split("|")[2]) > 0  # ADPF's stage 2 (boxes, crops, patch streams) ran and was timed
