"""adpf benchmark: it runs on the CPU at tiny sizes and prints its table (no timing assertions)."""
import argparse
import json
import re

import torch
import torch.nn.functional as F

from adpf import benchmark


def test_flop_counter_counts_the_cpu_attention_kernel():
    """The fused heads run SDPA's CPU kernel: its FLOPs are counted as 4·B·H·N²·D forward, 2.5× that backward."""
    b, h, n, d = 2, 3, 20, 8
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    forward = benchmark.flops_of(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward == 4 * b * h * n * n * d  # Q Kᵀ and A V, 2 FLOPs per multiply-add
    both = benchmark.flops_of(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both == forward + 10 * b * h * n * n * d  # backward recomputes A, then dV, dA, dQ, dK


def test_benchmark_runs_tiny_and_prints_every_row(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    args = parser.parse_args(["--presets", "cpu", "--tiny", "--device", "cpu", "--batch-size", "2",
                              "--warmup", "0", "--repeats", "1", "--no-align",
                              "--out", str(tmp_path / "table.md"), "--json", str(tmp_path / "numbers.json")])
    assert benchmark.run(args) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "table.md").read_text().strip().endswith(printed.strip().splitlines()[-1])
    for label, *_ in benchmark.ROWS:
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
    assert set(results) == set(benchmark.CASES)
    assert set(results["adpf"]["train"]) == {"attention", "fusion"}
    assert set(results["plain_cnn"]["train"]) == {"single"}
    for case in results.values():
        assert all(rate > 0 for rate in case["train"].values())
        assert case["forward_flops"] > 0
    # the baseline without attention does less arithmetic than either ADPF
    assert results["plain_cnn"]["forward_flops"] < results["plain attention"]["forward_flops"]
    assert results["plain_cnn"]["forward_flops"] < results["adpf"]["forward_flops"]
