"""The parts of ``gpu_run.sh``, one GPU session: each part writes one JSON file into ``--out``, and
``summary`` reads them all into one Markdown table.

    python benchmarks/gpu_bench.py --part matmul   --out OUT  # the card's bf16 matmul TFLOP/s
    python benchmarks/gpu_bench.py --part measure  --out OUT  # paper preset beside its baselines, batch 32 and 256
    python benchmarks/gpu_bench.py --part profile  --out OUT  # what limits a step: kernels, attention, box finding
    python benchmarks/gpu_bench.py --part train    --out OUT  # adpf.train, gpu recipe, 10,000 drawn faces
    python benchmarks/gpu_bench.py --part syncs    --out OUT  # host syncs: box finding, a step, adpf.train's step
    python benchmarks/gpu_bench.py --part chapters --out OUT  # book/build.py --only 07 --only 09 --profile paper
    python benchmarks/gpu_bench.py --part steps    --out OUT  # adpf's bare training steps, eager, batch 256
    python benchmarks/gpu_bench.py --part loop     --out OUT  # adpf.train's loop against those steps, data on the device
    python benchmarks/gpu_bench.py --part compile  --out OUT  # the bare steps under torch.compile
    python benchmarks/gpu_bench.py --part summary  --out OUT  # the table (stdout and OUT/gpu_table.md)

The networks are the ``paper`` preset (128×128 faces) in bf16 autocast with channels-last memory,
eager; ``--tiny`` runs every part on the CPU with the preset shrunk to a few pixels and a few
faces (``benchmark.TINY``), and the chapters at the ``paper`` profile on a few faces, to check
the script without a GPU.

The target: ≥ 5,000 training images/s in each stage, i.e. the paper's 200 + 200 epochs on
MORPH II Setting I (≈ 44,000 training images) in under an hour, against the paper's ≈ 23 hours.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import benchmark  # noqa: E402  (benchmarks/benchmark.py, beside this script)

PRESET = "paper"
# MORPH II Setting I as the paper trains it: 200 + 200 epochs over ~80% of 55,134 images.
PAPER_IMAGES, PAPER_EPOCHS, PAPER_HOURS = 44_000, 200, 23
TARGET = 5_000  # training images/s per stage: the paper's schedule in under an hour
FALLBACK_EPOCHS = 6  # the training part's epochs per stage when the measure part left no rates
STAGES = ("attention", "fusion")
#: the JSON file each part writes (the summary reads them; eight files in all with the table and log)
FILES = {"matmul": "matmul.json", "measure": "measure.json", "profile": "profile.json", "train": "train.json",
         "syncs": "syncs.json", "chapters": "chapters.json", "steps": "steps.json", "loop": "loop.json",
         "compile": "compile.json"}
LOOP_TARGET = 0.85  # the loop's images/s over the bare steps' (issue 18)


def settings(args, batch_size: int | None = None) -> benchmark.Settings:
    cuda = not args.tiny
    return benchmark.Settings(device=torch.device("cuda" if cuda else "cpu"), batch_size=batch_size or args.batch_size,
                              bf16=cuda, channels_last=cuda, warmup=3 if cuda else 1, repeats=5 if cuda else 1,
                              calls=5 if cuda else 1)


def write(args, part: str, record: dict) -> None:
    text = json.dumps(record, indent=2, default=str)
    print(text, flush=True)
    (args.out / FILES[part]).write_text(text + "\n")


def read(args, part: str) -> dict:
    try:
        return json.loads((args.out / FILES[part]).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def batch_of(config, s: benchmark.Settings) -> tuple[torch.Tensor, torch.Tensor]:
    images, ages = benchmark.sample_batch(config, s.batch_size, s.device)
    return (images.contiguous(memory_format=torch.channels_last) if s.channels_last else images), ages


def seconds_of(fn, s: benchmark.Settings) -> float:
    return benchmark.median_seconds({"fn": fn}, s)["fn"]


# --- matmul -------------------------------------------------------------------------------------

def part_matmul(args) -> None:
    """The card's practical ceiling: an n×n×n bf16 matrix product on random data."""
    device = torch.device("cpu" if args.tiny else "cuda")
    n = 256 if args.tiny else 8192
    write(args, "matmul", {"n": n, "device": str(device), "machine": benchmark.machine(), "torch": torch.__version__,
                           "bf16_tflops": benchmark.matmul_tflops(device, n=n, repeats=10)})


# --- measure ------------------------------------------------------------------------------------

def part_measure(args) -> None:
    """benchmark.py's table of the paper preset at the large batch (its record: chapter 11 reads it),
    then the three networks' training steps at the paper's batch of 32: images/s and peak memory."""
    s = settings(args)
    scratch = args.cache / "measure.md"
    ns = argparse.Namespace(presets=[PRESET], device=str(s.device), batch_size=s.batch_size, warmup=s.warmup,
                            repeats=s.repeats, calls=s.calls, clock="wall", bf16=s.bf16, channels_last=s.channels_last,
                            compile=False, no_align=True, matmul=False, tiny=args.tiny, out=str(scratch),
                            json=str(args.cache / "measure.json"))
    benchmark.run(ns)
    record = json.loads((args.cache / "measure.json").read_text())
    record["table"], record["batch_size"] = scratch.read_text(), s.batch_size
    write(args, "measure", record)  # kept if the small batch runs past the part's limit
    small = settings(args, args.small_batch)
    configs = {case: benchmark.case_config(PRESET, case, args.tiny) for case in benchmark.CASES}
    images, ages = batch_of(configs["adpf"], small)
    steps = {(case, stage): benchmark.train_step(config, stage, images, ages, small)
             for case, config in configs.items() for stage in benchmark.stages_of(config)}
    rows = {case: {} for case in configs}
    for (case, stage), seconds in benchmark.median_seconds(steps, small).items():
        rows[case][stage] = {"images_per_s": small.batch_size / seconds,
                             "peak_mib": benchmark.peak_memory_mib(steps[case, stage], small.device)}
    record["small_batch"] = {"settings": small.describe(), "batch_size": small.batch_size, "results": rows}
    write(args, "measure", record)


# --- profile ------------------------------------------------------------------------------------

def kernel_times(prof, device: torch.device) -> list[tuple[str, float]]:
    """(name, time in ms) of every kernel (GPU: the device's kernels, copies and fills, not the
    host operators that launched them) or operator (CPU: self time) the profiler saw, longest first."""
    from torch.autograd import DeviceType

    if device.type == "cuda":
        rows = [(e.key, e.self_device_time_total / 1e3) for e in prof.key_averages()
                if getattr(e, "device_type", None) == DeviceType.CUDA]
    else:
        rows = [(e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()]
    return sorted(((k, t) for k, t in rows if t > 0), key=lambda r: -r[1])


def part_profile(args) -> None:
    """Where adpf's training steps spend their time, at the large batch.

    Per stage: the step's wall time; the kernels' device time over the step (busy share < 1 means
    the GPU waits for the host to launch work); the top kernels. Stage 1: RMHHA forward + backward
    alone (the attention). Stage 2: the frozen AttentionNet's forward, box finding and cropping
    alone; the rest is FusionNet's forward + backward and the update.
    """
    from torch.profiler import ProfilerActivity, profile

    from adpf.patches import crop_patches, maps_to_boxes

    s = settings(args)
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    images, ages = batch_of(config, s)
    cuda = s.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    record = {"settings": s.describe(), "device": s.device.type, "stages": {}}
    for stage in STAGES:
        step = benchmark.train_step(config, stage, images, ages, s)
        step_s = seconds_of(step, s)
        with profile(activities=activities) as prof:
            for _ in range(3):
                step()
            benchmark.synchronize(s.device)
        kernels = kernel_times(prof, s.device)
        # on a GPU the kernels run one after another on one stream; on a CPU the operators nest,
        # so their self times still add up to the time spent, without the Python between them
        busy_ms = sum(t for _, t in kernels) / 3
        record["stages"][stage] = {"step_ms": 1e3 * step_s, "images_per_s": s.batch_size / step_s,
                                   "kernel_ms_per_step": busy_ms, "busy_share": busy_ms / (1e3 * step_s),
                                   "top": [{"name": k, "ms_per_step": t / 3, "share": t / 3 / (1e3 * step_s)}
                                           for k, t in kernels[:12]], "parts_ms": {}}
        del step
    parts = record["stages"]["attention"]["parts_ms"]
    parts["RMHHA forward + backward"] = 1e3 * seconds_of(benchmark.attention_step(config, s.batch_size, s), s)
    model = benchmark.network(config, s).freeze_attention()
    with torch.no_grad(), benchmark.autocast(s):
        att = model.attention_net(images)
        maps = att.attention.ranked.detach()
        boxes = maps_to_boxes(maps, config.image_size, config.patch_threshold, config.patch_min_frac,
                              config.patch_max_frac)
        parts = record["stages"]["fusion"]["parts_ms"]
        parts["AttentionNet forward (frozen)"] = 1e3 * seconds_of(lambda: model.attention_net(images), s)
        parts["box finding (maps_to_boxes)"] = 1e3 * seconds_of(
            lambda: maps_to_boxes(maps, config.image_size, config.patch_threshold, config.patch_min_frac,
                                  config.patch_max_frac), s)
        parts["crops (crop_patches)"] = 1e3 * seconds_of(lambda: crop_patches(images, boxes, config.patch_size), s)
    for r in record["stages"].values():
        r["parts_share"] = {k: v / r["step_ms"] for k, v in r["parts_ms"].items()}
    write(args, "profile", record)


# --- train --------------------------------------------------------------------------------------

def drawn(image_size: int, n: int):
    """The ``n`` drawn faces of seed 0 at ``image_size`` (the book's, from the cache), split by person as
    the book splits them (``adpf.setting.SPLIT_SHARES``, seed 0)."""
    from adpf.data.prepared import default_dataset, load_prepared
    from adpf.data.protocols import subject_split
    from adpf.setting import SPLIT_SHARES

    data = load_prepared(default_dataset(image_size, n=n, seed=0, progress=False))
    return data, subject_split(data.meta, **SPLIT_SHARES, seed=0)


def loader_rate(data, indices, recipe, device: torch.device, seconds: float) -> float:
    """Images/s of adpf.train's training loader alone (augmentation, collation, pinning, the copy to the device)."""
    from adpf.distributed import Process
    from adpf.train import make_loader

    loader = make_loader(data, indices, recipe, Process(device=device), train=True,
                         generator=torch.Generator().manual_seed(0))
    seen, start = -1, None  # the clock starts after the first batch (workers starting up)
    while start is None or time.perf_counter() - start < seconds:
        for batch in loader:
            batch["image"].to(device, non_blocking=True)
            if start is None:
                seen, start = 0, time.perf_counter()
                continue
            seen += len(batch["image"])
            if time.perf_counter() - start >= seconds:
                break
    benchmark.synchronize(device)
    return seen / (time.perf_counter() - start)


def fitted(recipe, epochs: int):
    """``recipe`` with ``epochs`` per stage, its step schedule and warm-up shrunk in proportion."""
    full = recipe.attention_epochs
    changes = {"attention_epochs": epochs, "fusion_epochs": epochs,
               "warmup_epochs": min(recipe.warmup_epochs, epochs // 4)}
    if recipe.schedule == "step":
        changes["lr_step"] = max(1, round(recipe.lr_step * epochs / full))
    return recipe.replace(**changes)


def trained(config, data, split, recipe) -> dict:
    from adpf.train import train

    start = time.perf_counter()
    result = train(config, data, split, recipe, use_cache=False, progress=False)
    return {"wall_s": time.perf_counter() - start, "stage_seconds": result.timings, "images_per_s": result.throughput,
            "test_mae": result.mae, "test_cs5": result.metrics["test"]["cs"][5],
            "val_mae": result.metrics.get("val", {}).get("mae"),
            "val_mae_per_epoch": {k: [r.get("val_mae") for r in rows] for k, rows in result.history.items()},
            "recipe": recipe.to_dict()}


def epochs_that_fit(recipe, n_train: int, step_rates: dict, loader_rate: float, seconds: float) -> tuple[int, float]:
    """Epochs per stage (at most the recipe's, at least 2) whose two stages take about ``seconds``, and the
    estimated seconds of one epoch of each stage: the bare steps' rates, plus the loader's time where it
    runs in the training process (``num_workers=0``), plus 20 % (validation, checkpoints, the host)."""
    loading = 1 / loader_rate if recipe.num_workers == 0 else 0.0
    epoch_s = 1.2 * n_train * sum(1 / step_rates[s] + loading for s in STAGES)
    return max(2, min(recipe.attention_epochs, int(seconds / epoch_s))), epoch_s


def part_train(args) -> None:
    """A real two-stage training of the paper preset with the ``gpu`` recipe (``adpf.train.train``) on
    ``--images`` drawn faces, and the ``cpu`` preset with its ``cpu`` recipe on as many faces beside it.

    The gpu recipe's epochs are kept when they fit ``--train-seconds`` (`epochs_that_fit`, at the
    step rates the measure part found and the loader's rate measured here); otherwise fewer, with
    the step schedule and warm-up shrunk in proportion (the record says which). The record is
    written after each training, so a part stopped at its limit keeps what it finished.
    """
    from adpf.recipes import get_recipe

    device = "cpu" if args.tiny else "cuda"
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    start = time.perf_counter()
    data, split = drawn(config.image_size, args.images)
    record = {"images": len(data), "image_size": config.image_size, "draw_seconds": time.perf_counter() - start,
              "split": {k: len(getattr(split, k)) for k in ("train", "val", "test")}}
    recipe = get_recipe("gpu", device=device, **({"batch_size": args.batch_size} if args.tiny else {}))
    record["loader_images_per_s"] = {f"num_workers={w}": loader_rate(data, split.train, recipe.replace(num_workers=w),
                                                                    torch.device(device), 0.5 if args.tiny else 3)
                                     for w in sorted({recipe.num_workers, 0 if args.tiny else 8})}
    rates = read(args, "measure").get("presets", {}).get(PRESET, {}).get("results", {}).get("adpf", {}).get("train", {})
    epochs, epoch_s, why = FALLBACK_EPOCHS, None, "the measure part left no step rates"
    if args.tiny:
        epochs, why = 1, "a rehearsal"
    elif all(rates.get(s) for s in STAGES):
        epochs, epoch_s = epochs_that_fit(recipe, len(split.train), rates,
                                          record["loader_images_per_s"][f"num_workers={recipe.num_workers}"],
                                          args.train_seconds)
        why = f"to fit the part's {args.train_seconds:.0f} s"
    record["epochs"] = {"gpu_recipe": recipe.attention_epochs, "run": epochs, "why": why,
                        "estimated_epoch_seconds": epoch_s}
    recipe = fitted(recipe, epochs) if epochs != recipe.attention_epochs else recipe
    print(f"training the {PRESET} preset, {epochs} + {epochs} epochs of {len(split.train)} faces", flush=True)
    record["paper_preset"] = trained(config, data, split, recipe)
    write(args, "train", record)
    cpu = benchmark.case_config("cpu", "adpf", args.tiny)
    cpu_data, cpu_split = drawn(cpu.image_size, args.images)
    cpu_recipe = get_recipe("cpu", device=device, **({"attention_epochs": 1, "fusion_epochs": 1} if args.tiny else {}))
    print(f"training the cpu preset, {cpu_recipe.attention_epochs} + {cpu_recipe.fusion_epochs} epochs", flush=True)
    record["cpu_preset"] = trained(cpu, cpu_data, cpu_split, cpu_recipe)
    write(args, "train", record)


# --- steps, loop, compile: the loop as fast as its steps ----------------------------------------

def bare_rates(args, compile: bool) -> dict:
    """Images/s of adpf's bare training steps (``benchmark.train_step``: no data, no loop) per stage,
    at the large batch; with ``compile`` under torch.compile (the first calls compile: warm-up)."""
    s = settings(args)
    s = benchmark.Settings(**{**s.__dict__, "compile": compile, "warmup": max(s.warmup, 3 if compile else 1)})
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    images, ages = batch_of(config, s)
    record = {"settings": s.describe(), "batch_size": s.batch_size, "machine": benchmark.machine(),
              "torch": torch.__version__, "images_per_s": {}, "warmup_s": {}}
    for stage in STAGES:
        step = benchmark.train_step(config, stage, images, ages, s)
        start = time.perf_counter()
        step()  # the first call: compilation (or cuDNN's autotuning)
        benchmark.synchronize(s.device)
        record["warmup_s"][stage] = time.perf_counter() - start
        record["images_per_s"][stage] = s.batch_size / seconds_of(step, s)
        write(args, "compile" if compile else "steps", record)  # a part stopped at its limit keeps its stages
        del step
    return record


def part_steps(args) -> None:
    """The bare steps the loop is held to (eager, the recipe's bf16 and channels-last)."""
    bare_rates(args, compile=False)


def part_compile(args) -> None:
    """The same bare steps under ``torch.compile`` (inductor); the summary sets them beside eager."""
    bare_rates(args, compile=True)


def data_rate(data, indices, recipe, device: torch.device, epochs: int) -> float:
    """Images/s of the loop's data alone: `DeviceBatches` (gather, pad-crop-flip, to float) over ``epochs``
    epochs, synchronised at the end (the first epoch, with the copy to the device, not counted)."""
    from adpf.distributed import Process
    from adpf.train import make_loader

    batches = make_loader(data, indices, recipe.replace(data_on_device=True), Process(device=device), train=True,
                          generator=torch.Generator().manual_seed(0))
    for _ in batches:  # the first epoch: allocations
        pass
    benchmark.synchronize(device)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in batches:
            seen += len(batch["image"])
    benchmark.synchronize(device)
    return seen / (time.perf_counter() - start)


def timed_training(config, data, split, recipe) -> dict:
    """``adpf.train.train`` with the epochs' rates and what each epoch spent beside its steps.

    Per stage: images/s of each epoch (``history``), the median over all but the first epoch
    (cuDNN's autotuning, first allocations), and the share of the stage's wall time spent outside
    the epochs' steps (validation, checkpoint, the host: the time between two epochs' callbacks
    minus the epoch's own seconds)."""
    from adpf.train import train

    marks: dict[str, list[tuple[float, float]]] = {}
    clock = {"last": time.perf_counter()}

    def callback(stage, row, model):
        now = time.perf_counter()
        marks.setdefault(stage.name, []).append((now - clock["last"], row["seconds"]))
        clock["last"] = now

    start = time.perf_counter()
    result = train(config, data, split, recipe, use_cache=False, progress=False, callback=callback)
    out = {"wall_s": time.perf_counter() - start, "test_mae": result.mae, "recipe": recipe.to_dict(), "stages": {}}
    for stage, rows in result.history.items():
        rates = [r["images_per_s"] for r in rows]
        steady = sorted(rates[1:] or rates)
        between = marks.get(stage, [])[1:]  # the first interval also holds the stage's set-up
        wall = sum(w for w, _ in between)
        out["stages"][stage] = {"images_per_s_per_epoch": rates, "images_per_s": steady[len(steady) // 2],
                                "outside_steps_share": (wall - sum(e for _, e in between)) / wall if wall else None}
    return out


def part_loop(args) -> None:
    """``adpf.train``'s loop with the gpu recipe on ``--images`` drawn faces, set against the bare steps
    (steps part): the data on the device (the recipe's default on CUDA), then the DataLoader with 8
    workers beside it, and the data path alone (`data_rate`). A few epochs a stage: the numbers are
    rates, not a trained model."""
    from adpf.recipes import get_recipe

    device = torch.device("cpu" if args.tiny else "cuda")
    config = benchmark.case_config(PRESET, "adpf", args.tiny)
    start = time.perf_counter()
    data, split = drawn(config.image_size, args.images)
    epochs = 2 if args.tiny else args.loop_epochs
    recipe = get_recipe("gpu", device=device.type, attention_epochs=epochs, fusion_epochs=epochs, warmup_epochs=1,
                        lr_step=epochs, **({"batch_size": args.batch_size} if args.tiny else {}))
    record = {"images": len(data), "image_size": config.image_size, "draw_seconds": time.perf_counter() - start,
              "train_images": len(split.train), "epochs": epochs, "batch_size": recipe.batch_size, "runs": {}}
    record["data_on_device_images_per_s"] = data_rate(data, split.train, recipe, device, 1 if args.tiny else 3)
    write(args, "loop", record)
    runs = {"data on device": recipe.replace(data_on_device=True),
            "DataLoader, 8 workers": recipe.replace(data_on_device=False, num_workers=0 if args.tiny else 8,
                                                    attention_epochs=2, fusion_epochs=2, lr_step=2)}
    for name, r in runs.items():
        print(f"adpf.train, {name}: {r.attention_epochs} + {r.fusion_epochs} epochs of {len(split.train)} faces",
              flush=True)
        record["runs"][name] = timed_training(config, data, split, r)
        write(args, "loop", record)


def loop_lines(steps: dict, loop: dict, compiled: dict) -> list[str]:
    """The summary's section on the loop against its bare steps: rates, ratios, and what limits the loop."""
    bare = steps.get("images_per_s", {})
    lines = ["", "## The loop against its steps (adpf.train, gpu recipe)", ""]
    if not loop:
        return lines + ["loop part missing."]
    lines += [f"{loop['train_images']:,} drawn faces a stage, batch {loop['batch_size']}, {loop['epochs']} epochs a "
              "stage (rates: median over the epochs after the first). Bare steps: the steps part"
              f"{'' if bare else ' (missing)'}. Data on the device alone (gather and pad-crop-flip): "
              f"{_f(loop.get('data_on_device_images_per_s'), ',.0f')} images/s.", "",
              "| loop | stage | bare steps images/s | loop images/s | loop ÷ bare | outside the steps (validation, "
              "checkpoint) |", "|---|---|---|---|---|---|"]
    for name, run in loop["runs"].items():
        for stage in STAGES:
            r = run["stages"].get(stage, {})
            ratio = r.get("images_per_s") / bare[stage] if r.get("images_per_s") and bare.get(stage) else None
            lines.append(f"| {name} | {stage} | {_f(bare.get(stage), ',.0f')} | {_f(r.get('images_per_s'), ',.0f')} | "
                         f"{_f(ratio and 100 * ratio, '.0f')} % | {_f(r.get('outside_steps_share') and 100 * r['outside_steps_share'], '.0f')} % |")
    lines += ["", f"Target: the loop ≥ {100 * LOOP_TARGET:.0f} % of the bare steps in each stage."]
    device_run = loop["runs"].get("data on device", {}).get("stages", {})
    for stage in STAGES:
        r, b = device_run.get(stage, {}), bare.get(stage)
        if not (r.get("images_per_s") and b):
            continue
        ratio = r["images_per_s"] / b
        limits = []
        if (loop.get("data_on_device_images_per_s") or 0) < 3 * b:
            limits.append(f"the data path (alone {_f(loop.get('data_on_device_images_per_s'), ',.0f')} images/s, "
                          "under 3× the steps)")
        if (r.get("outside_steps_share") or 0) > 0.1:
            limits.append(f"validation and checkpoints ({100 * r['outside_steps_share']:.0f} % of the stage)")
        if not limits:
            limits.append("the step itself as the loop runs it (the loss tally, gradient clipping, the scheduler, "
                          "launching from the host); the data path and validation are not it")
        lines.append(f"- {stage}: {100 * ratio:.0f} % → **{'met' if ratio >= LOOP_TARGET else 'short'}**"
                     + ("" if ratio >= LOOP_TARGET else f"; what limits it: {'; '.join(limits)}") + ".")
    comp = compiled.get("images_per_s", {})
    lines += ["", "torch.compile (bare steps): " + (", ".join(
        f"{st} {_f(comp.get(st), ',.0f')} images/s ({_f(comp.get(st) and bare.get(st) and comp[st] / bare[st], '.2f')}× "
        f"eager; compiling {_f(compiled.get('warmup_s', {}).get(st), '.0f')} s)" for st in STAGES)
        if comp else "compile part missing.")]
    return lines


# --- syncs --------------------------------------------------------------------------------------

def counted_syncs(fn, cuda: bool) -> tuple[int | None, list[str]]:
    """Host syncs while ``fn`` runs (``torch.cuda.set_sync_debug_mode("warn")``); None on a CPU."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    return (len(syncs) if cuda else None), syncs[:5]


def part_syncs(args) -> None:
    """Host syncs (``torch.cuda.set_sync_debug_mode``): box finding must make none; a step's are counted.

    Box finding (``maps_to_boxes``, torch path) runs under mode "error", so one sync fails the
    part. Each stage's bare training step (``benchmark.train_step``) runs under "warn" and its
    warnings are counted. ``adpf.train``'s own step is counted by difference: one epoch of 8 steps
    minus one of 4 (everything but the steps cancels), for AttentionNet alone (stage 1) and for
    ADPF (both stages). On a CPU there is no device to wait for: the counts are left empty (the
    tests run the box path on the meta device instead, where any read of a value fails).
    """
    from adpf.patches import maps_to_boxes
    from adpf.recipes import get_recipe
    from adpf.train import train

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
    result = {"box_finding_syncs": 0 if cuda else None, "boxes": list(boxes.shape), "checked_on": str(s.device),
              "per_step": {}, "adpf_train_per_step": {}}
    images, ages = batch_of(config, s)
    for stage in STAGES:
        step = benchmark.train_step(config, stage, images, ages, s)
        step()
        benchmark.synchronize(s.device)
        syncs, first = counted_syncs(step, cuda)
        result["per_step"][stage] = {"syncs": syncs, "first": first}
    data, split = drawn(config.image_size, args.images)
    batch = s.batch_size if cuda else args.small_batch  # a few faces: 8 steps of 2 on the rehearsal
    recipe = get_recipe("gpu", device=str(s.device), batch_size=batch, attention_epochs=1, fusion_epochs=1)
    counts = {}
    for variant in ("attention_only", "adpf"):
        for steps in (4, 8):
            subset = {"train": split.train[:steps * batch], "val": split.val[:0], "test": split.test[:1]}
            run = functools.partial(train, config.replace(variant=variant), data, subset, recipe,
                                    use_cache=False, progress=False)
            counts[variant, steps] = counted_syncs(run, cuda)
    if cuda:
        stage1 = (counts["attention_only", 8][0] - counts["attention_only", 4][0]) / 4
        both = (counts["adpf", 8][0] - counts["adpf", 4][0]) / 4
        result["adpf_train_per_step"] = {"attention": stage1, "fusion": both - stage1,
                                         "first": counts["adpf", 8][1]}
    write(args, "syncs", result)


# --- chapters -----------------------------------------------------------------------------------

def part_chapters(args) -> None:
    """Chapters 7 and 9 executed by ``book/build.py`` with the ``paper`` profile on the device, one at a
    time (their shared trainings first), with ``--chapter-epochs`` per stage; their wall times.

    The HTML is not the point here: where ``jupyter-book`` is not installed (the GPU machine), a
    stand-in that only says so takes its place, so the build reaches its table of times.
    """
    device = "cpu" if args.tiny else "cuda"
    command = [sys.executable, "book/build.py", "--only", "07", "--only", "09", "--profile", PRESET,
               "--device", device, "--workers", "1", "--param", f"epochs={args.chapter_epochs}"]
    if args.tiny:
        command += ["--param", f"n_faces={args.images}"]
    env = dict(os.environ)
    stand_in = None
    if not (Path(sys.executable).with_name("jupyter-book").exists() or shutil.which("jupyter-book")):
        stand_in = Path(tempfile.mkdtemp())
        (stand_in / "jupyter-book").write_text("#!/bin/sh\necho 'jupyter-book is not installed here: no HTML'\n")
        (stand_in / "jupyter-book").chmod(0o755)
        env["PATH"] = f"{stand_in}{os.pathsep}{env.get('PATH', '')}"
    times = ROOT / "_build" / "book-times.json"
    times.unlink(missing_ok=True)
    record = {"command": " ".join(["python", *command[1:]]), "status": "stopped before the build ended",
              "wall_s": None, "html": "stand-in (no jupyter-book)" if stand_in else "built"}
    write(args, "chapters", record)  # what a part stopped at its limit leaves (the log has build.py's lines)
    start = time.perf_counter()
    record["status"] = subprocess.call(command, cwd=ROOT, env=env)
    record["wall_s"] = time.perf_counter() - start
    if times.is_file():
        record["book_times"] = json.loads(times.read_text())
    write(args, "chapters", record)


# --- summary ------------------------------------------------------------------------------------

def _f(value, spec: str) -> str:
    return "—" if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) else format(value, spec)


def schedule_hours(rates: dict) -> float | None:
    """Hours of the paper's 200 + 200 epochs on MORPH II Setting I at these per-stage rates."""
    if not all(rates.get(s) for s in STAGES):
        return None
    return PAPER_EPOCHS * PAPER_IMAGES * sum(1 / rates[s] for s in STAGES) / 3600


def part_summary(args) -> None:
    """One Markdown table of every part's numbers, the target and, when short of it, what limits it."""
    matmul, measure, prof, real, syncs, chapters, steps, loop, compiled = (read(args, p) for p in FILES)
    peak = matmul.get("bf16_tflops")
    results = measure.get("presets", {}).get(PRESET, {}).get("results", {})
    small = measure.get("small_batch", {})
    lines = [f"# ADPF on one GPU: {measure.get('machine') or matmul.get('machine') or steps.get('machine', '?')}, "
             f"{measure.get('date', time.strftime('%Y-%m-%d'))}", "",
             f"torch {measure.get('torch') or matmul.get('torch') or steps.get('torch', '?')}; preset {PRESET}"
             f"{' (tiny: a few pixels, CPU rehearsal)' if args.tiny else ''}; "
             f"{measure.get('presets', {}).get(PRESET, {}).get('settings', 'measure part missing')}.", ""]
    lines.append(f"Measured bf16 matmul ({matmul.get('n', '?')}³, random data): {_f(peak, '.1f')} TFLOP/s." if peak
                 else "Measured bf16 matmul: — (matmul part missing).")
    lines += ["", "## Training steps (bare steps: no data loading)", "",
              "| network, stage | batch | images/s | ms/step | peak MiB | train GFLOP/image | achieved TFLOP/s "
              "| share of matmul rate |", "|---|---|---|---|---|---|---|---|"]

    def row(label: str, batch, ips, mib, flops) -> None:
        achieved = ips * flops / 1e12 if ips and flops else None
        share = achieved / peak if achieved and peak else None
        lines.append(f"| {label} | {batch} | {_f(ips, ',.0f')} | {_f(ips and 1e3 * batch / ips, '.1f')} | "
                     f"{_f(mib, ',.1f')} | {_f(flops and flops / 1e9, '.3g')} | {_f(achieved, '.3g')} | "
                     f"{_f(share and 100 * share, '.2g')} % |")

    for case, m in results.items():
        for stage, ips in m["train"].items():
            flops = m["train_flops"].get(stage)
            label = f"{case}, {'both (one stage)' if stage == 'single' else stage}"
            for batch, rate, mib in ((small.get("batch_size"), small.get("results", {}).get(case, {}).get(stage, {})
                                      .get("images_per_s"), small.get("results", {}).get(case, {}).get(stage, {})
                                      .get("peak_mib")),
                                     (measure.get("batch_size") or args.batch_size, ips, m["train_memory"].get(stage))):
                row(label, batch, rate, mib, flops)
    best = {s: results.get("adpf", {}).get("train", {}).get(s) or steps.get("images_per_s", {}).get(s)
            for s in STAGES}
    paper = real.get("paper_preset", {})
    lines += loop_lines(steps, loop, compiled)
    lines += ["", "## Real training (adpf.train: data loading, validation each epoch, checkpoints)", ""]
    if real:
        ep = real["epochs"]
        lines += [f"{real['images']:,} drawn {real['image_size']}×{real['image_size']} faces (drawn in "
                  f"{real['draw_seconds']:.0f} s), split by person {real['split']['train']:,} / {real['split']['val']:,} "
                  f"/ {real['split']['test']:,}; the gpu recipe's {ep['gpu_recipe']} + {ep['gpu_recipe']} epochs"
                  + ("" if ep["run"] == ep["gpu_recipe"] else
                     f", run as {ep['run']} + {ep['run']} ({ep['why']}; step schedule and warm-up shrunk in "
                     "proportion)") + ". Loader alone: "
                  + ", ".join(f"{k}: {v:,.0f} images/s" for k, v in real["loader_images_per_s"].items()) + ".", "",
                  "| model | recipe | epochs | stage 1 s | stage 2 s | stage 1 images/s | stage 2 images/s "
                  "| test MAE | wall s |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in (("paper preset", paper), ("cpu preset (64×64)", real.get("cpu_preset", {}))):
            if r:
                rec, sec, ips = r["recipe"], r["stage_seconds"], r["images_per_s"]
                lines.append(f"| {name} | batch {rec['batch_size']}, lr {rec['lr']:g}, {rec['schedule']} | "
                             f"{rec['attention_epochs']} + {rec['fusion_epochs']} | {_f(sec.get('attention'), '.1f')} | "
                             f"{_f(sec.get('fusion'), '.1f')} | {_f(ips.get('attention'), ',.0f')} | "
                             f"{_f(ips.get('fusion'), ',.0f')} | {_f(r['test_mae'], '.2f')} | {r['wall_s']:.0f} |")
    else:
        lines.append("train part missing.")
    lines += ["", "## Host syncs", ""]
    if syncs:
        per = syncs.get("per_step", {})
        own = syncs.get("adpf_train_per_step", {})
        lines.append(f"Box finding: {_f(syncs.get('box_finding_syncs'), 'd')} (mode \"error\"; on {syncs['checked_on']}). "
                     "Per training step, bare: " + ", ".join(f"{st} {_f(v['syncs'], 'd')}" for st, v in per.items())
                     + "; in adpf.train's loop: " + ", ".join(f"{st} {_f(own.get(st), '.1f')}" for st in STAGES)
                     + (f" (first: {own['first'][0]})" if own.get("first") else "") + ".")
    else:
        lines.append("syncs part missing.")
    lines += ["", "## Book chapters (book/build.py, paper profile)", ""]
    if chapters:
        steps = chapters.get("book_times", {}).get("steps", [])
        lines.append(f"`{chapters['command']}`: exit {chapters['status']}, {_f(chapters['wall_s'], '.0f')} s in all; "
                     f"HTML {chapters['html']}.")
        lines += ["", "| step | seconds | status |", "|---|---|---|"]
        lines += [f"| {r['step']} | {r['seconds']:.1f} | {r['status']}{': ' + r['error'] if r.get('error') else ''} |"
                  for r in steps]
    else:
        lines.append("chapters part missing.")
    lines += ["", "## Against the target", ""]
    real_rates = paper.get("images_per_s") or {
        s: r.get("images_per_s") for s, r in loop.get("runs", {}).get("data on device", {}).get("stages", {}).items()}
    lines.append(f"Target: ≥ {TARGET:,} training images/s in each stage, i.e. the paper's {PAPER_EPOCHS} + "
                 f"{PAPER_EPOCHS} epochs on MORPH II Setting I (≈ {PAPER_IMAGES:,} images) in under an hour "
                 f"(the paper: ≈ {PAPER_HOURS} h).")
    for label, rates in ((f"bare steps, batch {args.batch_size}", best), ("adpf.train, gpu recipe", real_rates)):
        hours = schedule_hours(rates)
        verdict = "—" if hours is None else "met" if all(rates[s] >= TARGET for s in STAGES) else "short"
        lines.append(f"- {label}: stage 1 {_f(rates.get('attention'), ',.0f')}, stage 2 "
                     f"{_f(rates.get('fusion'), ',.0f')} images/s → the paper's schedule in {_f(hours, '.2f')} h: "
                     f"**{verdict}**.")
    # a stage is short when its real training is (its bare step where the training part is missing)
    short = [s for s in STAGES if (real_rates.get(s) or best.get(s) or 0) < TARGET]
    if short:
        lines += ["", f"What limits the stages short of the target (profile part, batch {args.batch_size}):"]
        for stage in short:
            p = prof.get("stages", {}).get(stage)
            if p is None:
                lines.append(f"- {stage}: profile part missing.")
                continue
            top = ", ".join(f"{k['name'][:50]} {100 * k['share']:.0f} %" for k in p["top"][:4])
            parts = ", ".join(f"{k} {100 * v:.0f} %" for k, v in p["parts_share"].items())
            busy = (f"kernels busy {_f(100 * p['busy_share'], '.0f')} % of it (the rest is the GPU waiting for "
                    "the host to launch work)" if prof["device"] == "cuda" else "operators' self time on the CPU")
            lines.append(f"- {stage}: {_f(p['step_ms'], '.1f')} ms/step, {busy}; {parts}; "
                         f"top {'kernels' if prof['device'] == 'cuda' else 'operators'}: {top}.")
        loads = real.get("loader_images_per_s", {})
        if loads:
            lines.append("- data loading: the training loader alone gives "
                         + ", ".join(f"{v:,.0f} images/s ({k})" for k, v in loads.items())
                         + f" against the bare steps' {_f(min(filter(None, best.values()), default=None), ',.0f')}.")
    if measure.get("table"):
        lines += ["", "## benchmark.py's table (large batch)", "", measure["table"]]
    text = "\n".join(lines) + "\n"
    print(text)
    (args.out / "gpu_table.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=[*FILES, "summary"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON files and the table")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "adpf-gpu-run",
                        help="scratch folder")
    parser.add_argument("--tiny", action="store_true", help="CPU, a few pixels, a few faces: checks the script")
    parser.add_argument("--batch-size", type=int, help="the large batch (default 256; 4 with --tiny)")
    parser.add_argument("--small-batch", type=int, help="the paper's batch (default 32; 2 with --tiny)")
    parser.add_argument("--images", type=int, help="drawn faces to train on (default 10,000; 60 with --tiny)")
    parser.add_argument("--train-seconds", type=float, default=110,
                        help="time the paper preset's training may take (default 110); fewer epochs when short")
    parser.add_argument("--loop-epochs", type=int, default=4,
                        help="epochs a stage in the loop part, data on the device (default 4; 2 with --tiny)")
    parser.add_argument("--chapter-epochs", type=int, help="epochs per stage in the chapters (default 3; 2 with --tiny: "
                        "chapter 9 reads the change over the last epoch)")
    args = parser.parse_args()
    args.batch_size = args.batch_size or (4 if args.tiny else 256)
    args.small_batch = args.small_batch or (2 if args.tiny else 32)
    args.images = args.images or (60 if args.tiny else 10_000)
    args.chapter_epochs = args.chapter_epochs or (2 if args.tiny else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny to check the script on the CPU")
    if not args.tiny:
        torch.backends.cudnn.benchmark = True
    {"matmul": part_matmul, "measure": part_measure, "profile": part_profile, "train": part_train,
     "syncs": part_syncs, "chapters": part_chapters, "steps": part_steps, "loop": part_loop,
     "compile": part_compile, "summary": part_summary}[args.part](args)


if __name__ == "__main__":
    main()
