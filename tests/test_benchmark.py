"""benchmarks/benchmark.py: a script beside the library that runs on the CPU at tiny sizes and prints
its table (no timing assertions); importing adpf registers nothing with torch."""
import importlib.util
import json
import os
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


# --- gpu_run.sh's parts (benchmarks/gpu_bench.py), rehearsed on the CPU with --tiny ------------------

GPU_BENCH = ROOT / "benchmarks" / "gpu_bench.py"


def load_gpu_bench():
    sys.path.insert(0, str(GPU_BENCH.parent))  # it imports benchmark.py beside it
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_gpu_bench", GPU_BENCH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(GPU_BENCH.parent))


def test_fewer_epochs_keep_the_schedule_in_proportion():
    """When the gpu recipe's epochs do not fit, the step schedule and warm-up shrink with them."""
    from adpf.recipes import Recipe

    fitted = load_gpu_bench().fitted
    recipe = Recipe(attention_epochs=40, fusion_epochs=40, schedule="step", lr_step=10, warmup_epochs=2)
    short = fitted(recipe, 12)
    assert (short.attention_epochs, short.fusion_epochs, short.lr_step, short.warmup_epochs) == (12, 12, 3, 2)
    assert fitted(recipe, 4).warmup_epochs == 1 and fitted(recipe, 4).lr_step == 1
    assert short.replace(attention_epochs=40, fusion_epochs=40, lr_step=10) == recipe  # nothing else changed
    cosine = fitted(recipe.replace(schedule="cosine"), 8)
    assert cosine.lr_step == 10 and cosine.attention_epochs == 8


def test_gpu_run_tiny_parts_write_their_records_and_the_table(tmp_path):
    """The cheapest parts (matmul, measure, train, summary) run on the CPU at 16 pixels; the table's rates,
    ms/step and shares of the matmul rate are the records' numbers. The profile, syncs and chapters parts
    are rehearsed by ``bash benchmarks/gpu_run.sh --tiny`` alone: the chapters take minutes there."""
    out = tmp_path / "out"
    env = {**os.environ, "ADPF_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for part in ("matmul", "measure", "train", "summary"):
        done = subprocess.run([sys.executable, str(GPU_BENCH), "--part", part, "--out", str(out), "--tiny",
                               "--cache", str(tmp_path / "scratch")], capture_output=True, text=True, timeout=600,
                              env=env)
        assert done.returncode == 0, f"{part}: {done.stderr[-2000:]}"
    matmul, measure, train = (json.loads((out / f"{p}.json").read_text()) for p in ("matmul", "measure", "train"))
    peak = matmul["bf16_tflops"]
    assert peak > 0
    results = measure["presets"]["paper"]["results"]  # the record chapter 11 reads
    assert set(results) == {"adpf", "plain attention", "plain_cnn"}
    small = measure["small_batch"]["results"]
    table = (out / "gpu_table.md").read_text()
    for case, m in results.items():
        for stage, rate in m["train"].items():
            flops = m["train_flops"][stage]
            for batch, ips in ((2, small[case][stage]["images_per_s"]), (4, rate)):
                label = f"{case}, {'both (one stage)' if stage == 'single' else stage}"
                line = next(row for row in table.splitlines() if row.startswith(f"| {label} | {batch} |"))
                cells = [c.strip() for c in line.strip("|").split("|")]
                assert cells[2] == f"{ips:,.0f}" and cells[3] == f"{1e3 * batch / ips:.1f}"
                assert cells[7] == f"{100 * ips * flops / 1e12 / peak:.2g} %"
    from adpf.recipes import get_recipe

    assert (train["epochs"]["gpu_recipe"], train["epochs"]["run"]) == (get_recipe("gpu").attention_epochs, 1)
    paper = train["paper_preset"]
    assert paper["recipe"]["batch_size"] == 4 and paper["recipe"]["lr"] == get_recipe("gpu").lr
    for model in ("paper_preset", "cpu_preset"):
        assert set(train[model]["stage_seconds"]) == {"attention", "fusion"} and train[model]["test_mae"] > 0
    assert f"{paper['test_mae']:.2f}" in table
    # rates short of 5,000 images/s get the verdict "short"; a stage whose training is short gets the
    # profile's account of what limits it (here: that the part is missing) and the loader's rate
    bare, real = results["adpf"]["train"].values(), paper["images_per_s"].values()
    assert ("**short**" in table) == (min(bare) < 5_000 or min(real) < 5_000)
    short = [s for s, rate in paper["images_per_s"].items() if rate < 5_000]
    assert ("What limits the stages short of the target" in table) == bool(short)
    assert all(f"- {stage}: profile part missing." in table for stage in short)
    assert "syncs part missing." in table and "chapters part missing." in table


def test_the_benchmarks_readme_names_every_script():
    """benchmarks/README.md says its table holds every script in the folder: it does."""
    table = (ROOT / "benchmarks" / "README.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+\.(?:py|sh))` \|", table, flags=re.M))
    scripts = {p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    assert scripts - listed == set(), "benchmarks/README.md does not list these scripts"
    assert listed - scripts == set(), "benchmarks/README.md lists scripts that are not there"
