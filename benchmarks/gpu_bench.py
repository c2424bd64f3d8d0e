"""The parts of ``gpu_run.sh``: each writes a JSON file into the output folder, ``summary`` reads them.

    python benchmarks/gpu_bench.py --part measure --out OUT   # card's bf16 matmul + paper preset, eager
    python benchmarks/gpu_bench.py --part profile --out OUT   # the kernels adpf's training steps spend time in
    python benchmarks/gpu_bench.py --part compile --out OUT   # adpf's training steps under torch.compile
    python benchmarks/gpu_bench.py --part train --out OUT     # real training: both stages, synthetic faces
    python benchmarks/gpu_bench.py --part syncs --out OUT     # host syncs: none in box finding, per step
    python benchmarks/gpu_bench.py --part summary --out OUT   # the table (stdout and OUT/gpu_table.md)

``--tiny`` runs every part on the CPU at a few pixels, to check the script without a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import benchmark  # noqa: E402  (benchmarks/benchmark.py, beside this script)

PRESET = "paper"
# MORPH II Setting I as the paper trains it: 200 + 200 epochs over ~80% of 55,134 images.
PAPER_IMAGES, PAPER_EPOCHS = 44_000, 200


def settings(args, compile_: bool = False) -> benchmark.Settings:
    cuda = not args.tiny
    # on the CPU smoke run, dynamo traces the networks but nothing is compiled (C++ builds take minutes)
    return benchmark.Settings(device=torch.device("cuda" if cuda else "cpu"), batch_size=args.batch_size,
                              bf16=cuda, channels_last=cuda, compile=compile_,
                              compile_backend="inductor" if cuda else "eager", warmup=3 if cuda else 1,
                              repeats=5 if cuda else 2, calls=5 if cuda else 1)


def part_measure(args) -> None:
    """The card's bf16 matmul rate and the paper preset beside its baselines (benchmark.py), eager."""
    s = settings(args)
    ns = argparse.Namespace(presets=[PRESET], device=str(s.device), batch_size=s.batch_size, warmup=s.warmup,
                            repeats=s.repeats, calls=s.calls, clock="wall", bf16=s.bf16, channels_last=s.channels_last,
                            compile=False, no_align=not args.tiny, matmul=True, tiny=args.tiny,
                            out=str(args.out / "eager.md"), json=str(args.out / "eager.json"))
    benchmark.run(ns)
    # the paper's own batch of 32: how much of the card a step of that size uses
    small = benchmark.Settings(**{**s.__dict__, "batch_size": 32})
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    images, ages = benchmark.sample_batch(config, small.batch_size, small.device)
    images = images.contiguous(memory_format=torch.channels_last) if small.channels_last else images
    steps = {stage: benchmark.train_step(config, stage, images, ages, small) for stage in ("attention", "fusion")}
    rates = {stage: small.batch_size / t for stage, t in benchmark.median_seconds(steps, small).items()}
    print(f"adpf at batch 32 (eager): {rates}", flush=True)
    record = json.loads((args.out / "eager.json").read_text())
    record["adpf_batch_32"] = rates
    (args.out / "eager.json").write_text(json.dumps(record, indent=2) + "\n")


def part_profile(args) -> None:
    """The kernels that take adpf's training steps' time (torch.profiler), to say what limits them."""
    from torch.profiler import ProfilerActivity, profile

    s = settings(args)
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    images, ages = benchmark.sample_batch(config, s.batch_size, s.device)
    images = images.contiguous(memory_format=torch.channels_last) if s.channels_last else images
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if s.device.type == "cuda" else "self_cpu_time_total"
    text = []
    for stage in ("attention", "fusion"):
        step = benchmark.train_step(config, stage, images, ages, s)
        for _ in range(3):
            step()
        benchmark.synchronize(s.device)
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            benchmark.synchronize(s.device)
        text.append(f"## {stage}: 3 steps of batch {s.batch_size}\n\n"
                    + prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
        del step
    print("\n\n".join(text), flush=True)
    (args.out / "profile.txt").write_text("\n\n".join(text) + "\n")


def part_compile(args) -> None:
    """adpf's two training steps under torch.compile (the eager numbers are in eager.json)."""
    s = settings(args, compile_=True)
    torch.backends.cudnn.benchmark = s.device.type == "cuda"
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    images, ages = benchmark.sample_batch(config, s.batch_size, s.device)
    images = images.contiguous(memory_format=torch.channels_last) if s.channels_last else images
    result = {"settings": s.describe()}
    for stage in ("attention", "fusion"):
        start = time.perf_counter()
        try:
            step = benchmark.train_step(config, stage, images, ages, s)
            step()  # compiles
            compile_s = time.perf_counter() - start
            result[stage] = {"images_per_s": len(images) / benchmark.median_seconds({stage: step}, s)[stage],
                             "compile_s": compile_s}
        except Exception as e:  # a compile failure is a result too; eager numbers stand
            result[stage] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(stage, result[stage], flush=True)
        (args.out / "compile.json").write_text(json.dumps(result, indent=2) + "\n")


def part_train(args) -> None:
    """A few hundred real optimiser steps of stage 1 and stage 2 with adpf.train on synthetic faces."""
    from adpf.data.prepared import load_prepared, write_synthetic_prepared
    from adpf.data.protocols import subject_split
    from adpf.train import Recipe, train

    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    start = time.perf_counter()
    root = write_synthetic_prepared(args.cache / "synthetic", args.images, config.image_size, overwrite=True)
    data = load_prepared(root)
    data_s = time.perf_counter() - start
    split = subject_split(data.meta, train=0.9, val=0.0, test=0.1)
    steps = len(split.train) // args.batch_size
    epochs = max(2, math.ceil(args.steps / max(steps, 1)))
    recipe = Recipe(attention_epochs=epochs, fusion_epochs=epochs, batch_size=args.batch_size, lr=0.05,
                    schedule="cosine", warmup_epochs=1, num_workers=0 if args.tiny else 8,
                    device="cpu" if args.tiny else "cuda", amp=not args.tiny, channels_last=not args.tiny)
    result = train(config, data, {"train": split.train, "test": split.test}, recipe, use_cache=False, progress=False)
    out = {"images": len(data), "data_seconds": data_s, "batch_size": args.batch_size, "epochs": epochs,
           "steps_per_epoch": steps, "stages": {}}
    for stage, rows in result.history.items():
        rates = [r["images_per_s"] for r in rows[1:]] or [rows[0]["images_per_s"]]  # epoch 1 warms up
        out["stages"][stage] = {"steps": steps * len(rows), "median_images_per_s": statistics.median(rates),
                                "seconds": result.timings[stage], "last_loss": rows[-1]["loss"],
                                "last_train_mae": rows[-1]["train_mae"]}
    print(json.dumps(out, indent=2), flush=True)
    (args.out / "train.json").write_text(json.dumps(out, indent=2) + "\n")


def part_syncs(args) -> None:
    """Host syncs (``torch.cuda.set_sync_debug_mode``): box finding must make none; a training step's are counted.

    Box finding (``maps_to_boxes``, torch path) runs under mode "error", so one sync fails the
    part; each stage's whole training step runs under "warn" and its warnings are counted.
    """
    import warnings

    from adpf.patches import maps_to_boxes

    s = settings(args)
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    cuda = s.device.type == "cuda"
    maps = torch.randn(s.batch_size, config.heads, config.x_size, config.x_size, device=s.device)
    maps_to_boxes(maps, config.image_size)  # warm-up: allocations and kernel loading are not the path's
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        boxes = maps_to_boxes(maps, config.image_size, config.patch_threshold, config.patch_min_frac,
                              config.patch_max_frac)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    # on a CPU there is no device to wait for: the counts are left empty (the tests run the box
    # path on the meta device instead, where any read of a value fails)
    result = {"box_finding_syncs": 0 if cuda else None, "boxes": list(boxes.shape), "checked_on": str(s.device),
              "per_step": {}}
    images, ages = benchmark.sample_batch(config, s.batch_size, s.device)
    for stage in ("attention", "fusion"):
        step = benchmark.train_step(config, stage, images, ages, s)
        step()
        benchmark.synchronize(s.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        result["per_step"][stage] = {"syncs": len(syncs) if cuda else None, "first": syncs[:5]}
    print(json.dumps(result, indent=2), flush=True)
    (args.out / "syncs.json").write_text(json.dumps(result, indent=2) + "\n")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def part_summary(args) -> None:
    """One table: rates, FLOPs, achieved TFLOP/s against the card's matmul rate, the paper schedule's hours."""
    eager, comp, real = (_read(args.out / f) for f in ("eager.json", "compile.json", "train.json"))
    measured = eager.get("presets", {}).get(PRESET, {})
    lines = [f"# ADPF on {eager.get('machine', '?')}, {eager.get('date', '?')}", "",
             f"torch {eager.get('torch', '?')}; preset {PRESET}{' (tiny, CPU smoke run)' if args.tiny else ''}; "
             f"{measured.get('settings', '?')}"]
    peak = eager.get("matmul_bf16_tflops")
    if peak:
        lines.append(f"Measured bf16 matmul: {peak:.0f} TFLOP/s.")
    results = measured.get("results", {})
    lines += ["", "| network, stage | images/s | train GFLOP/image | achieved TFLOP/s | of matmul rate "
              "| card-limited images/s |", "|---|---|---|---|---|---|"]

    def row(label: str, ips: float | None, flops: float | None) -> None:
        achieved = ips * flops / 1e12 if ips and flops else None
        ceiling = peak * 1e12 / flops if peak and flops else None
        share = achieved / peak if achieved and peak else None
        lines.append(f"| {label} | {_f(ips, '.0f')} | {_f(flops and flops / 1e9, '.2f')} | {_f(achieved, '.1f')} | "
                     f"{_f(share and 100 * share, '.1f')} % | {_f(ceiling, '.0f')} |")

    for case, m in results.items():
        for stage, ips in m["train"].items():
            row(f"{case}, {stage} (eager)", ips, m["train_flops"].get(stage))
    adpf_flops = results.get("adpf", {}).get("train_flops", {})
    for stage, ips in eager.get("adpf_batch_32", {}).items():
        row(f"adpf, {stage} (eager, batch 32 as in the paper)", ips, adpf_flops.get(stage))
    for stage in ("attention", "fusion"):
        if "images_per_s" in comp.get(stage, {}):
            row(f"adpf, {stage} ({comp['settings'].split('; ')[0].split(', ')[-1]}, "
                f"{comp[stage]['compile_s']:.0f} s to compile)",
                comp[stage]["images_per_s"], adpf_flops.get(stage))
        elif "error" in comp.get(stage, {}):
            lines.append(f"| adpf, {stage} (torch.compile) | failed: {comp[stage]['error'][:80]} | | | | |")
    for stage, r in real.get("stages", {}).items():
        row(f"adpf, {stage}: adpf.train, {r['steps']} real steps with data loading", r["median_images_per_s"],
            adpf_flops.get(stage))

    def schedule(r1: float | None, r2: float | None) -> str:
        if not r1 or not r2:
            return "—"
        return f"{PAPER_EPOCHS * PAPER_IMAGES * (1 / r1 + 1 / r2) / 3600:.2f} h"

    best = {s: max([v for v in (results.get("adpf", {}).get("train", {}).get(s),
                                comp.get(s, {}).get("images_per_s")) if v] or [0]) for s in ("attention", "fusion")}
    real_rates = {s: r["median_images_per_s"] for s, r in real.get("stages", {}).items()}
    lines += ["", f"Paper schedule (MORPH II Setting I: {PAPER_EPOCHS} + {PAPER_EPOCHS} epochs of "
                  f"{PAPER_IMAGES:,} images; the paper: ~23 h on one GPU):",
              f"- at the best step rates above: {schedule(best['attention'], best['fusion'])}",
              f"- at the real training rates (adpf.train, data loading included): "
              f"{schedule(real_rates.get('attention'), real_rates.get('fusion'))}"]
    if real:
        lines.append(f"- the real run: {real['images']} synthetic faces drawn in {real['data_seconds']:.0f} s, "
                     f"{real['epochs']} epochs per stage of {real['steps_per_epoch']} steps; "
                     + "; ".join(f"{s}: final loss {r['last_loss']:.3f}, train MAE {r['last_train_mae']:.2f}"
                                 for s, r in real["stages"].items()))
    syncs = _read(args.out / "syncs.json")
    if syncs.get("box_finding_syncs") is not None:
        lines.append(f"- host syncs: box finding {syncs['box_finding_syncs']} (mode \"error\"); per training step "
                     + ", ".join(f"{st}: {v['syncs']}" for st, v in syncs["per_step"].items()))
    eager_md = args.out / "eager.md"
    text = "\n".join(lines) + ("\n\n## The benchmark table (eager)\n\n" + eager_md.read_text()
                               if eager_md.is_file() else "\n")
    print(text)
    (args.out / "gpu_table.md").write_text(text)


def _f(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["measure", "profile", "compile", "train", "syncs", "summary"],
                        required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON files and the table")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/adpf-gpu-run"), help="scratch folder for data")
    parser.add_argument("--tiny", action="store_true", help="CPU, a few pixels: checks the script")
    parser.add_argument("--batch-size", type=int, help="images per step (default 256; 4 with --tiny)")
    parser.add_argument("--steps", type=int, help="real training steps per stage (default 160; 4 with --tiny)")
    parser.add_argument("--images", type=int, help="synthetic faces to draw (default 2048; 48 with --tiny)")
    args = parser.parse_args()
    args.batch_size = args.batch_size or (4 if args.tiny else 256)
    args.steps = args.steps or (4 if args.tiny else 160)
    args.images = args.images or (48 if args.tiny else 2048)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny to check the script on the CPU")
    {"measure": part_measure, "profile": part_profile, "compile": part_compile, "train": part_train,
     "syncs": part_syncs, "summary": part_summary}[args.part](args)


if __name__ == "__main__":
    main()
