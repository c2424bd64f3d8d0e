"""Speed, memory and FLOPs of ADPF beside its baselines, measured on the machine it runs on.

    python benchmarks/benchmark.py [--presets paper cpu] [--device cuda] [--bf16] [--channels-last] [--compile]

A script beside the library, not part of it (run it from a checkout; it imports the checkout's
``adpf``): it registers FLOP formulas with torch's counter, which importing ``adpf`` must not do.

For each preset three networks are measured in the same run:

``adpf``             ADPF with ``attention_impl="sdpa"`` (the fused heads of
                     ``attention.hybrid_attention_heads``);
``plain attention``  the same ADPF with ``attention_impl="plain"`` (each head in turn, explicit
                     matmul + softmax: the reference);
``plain_cnn``        the baseline without attention or patches (FusionNet's main stream).

Rows (each the median over ``--repeats`` rounds, after ``--warmup`` calls, synchronising the
GPU before every clock reading):

- training images/s of a real optimiser step (``train.stage_loss``, SGD with momentum as in
  ``train.run_stage``) for stage 1 (AttentionNet, Eq. 14) and stage 2 (AttentionNet frozen;
  maps → boxes → patches → FusionNet, Eq. 13); ``plain_cnn`` has one stage, shown in both
  rows; "both stages" is the rate of an epoch of each stage (1 / (1/r1 + 1/r2));
- inference images/s (a batch) and the latency of one photo, with and without dlib alignment
  (``data.align.align_face`` on scikit-image's astronaut photo, which ships with the package);
- peak memory of a training step above what was in use before it: on CUDA
  ``torch.cuda.max_memory_allocated``; on CPU the bytes malloc has handed out (glibc's
  ``mallinfo2``, sampled every millisecond; ``_host_memory_reader``). tracemalloc would miss
  torch's allocations, and the resident set size hides them once freed memory is reused;
- FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is
  2 FLOPs): the forward pass, and a whole training step (forward + backward) per image. These
  are the FLOPs executed, so the fused heads' zero-padded value columns count too.

Ratio columns are oriented so that > 1 means ``adpf`` is better (faster, smaller) than the
plain-attention ADPF, and "÷ plain_cnn" is what the attention costs: ``adpf``'s time, memory
or FLOPs over the baseline's.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's adpf, installed or not

import torch  # noqa: E402
from torch.utils.flop_counter import (FlopCounterMode, flop_registry, register_flop_formula,  # noqa: E402
                                      sdpa_backward_flop_count, sdpa_flop_count)

from adpf.config import PRESETS, ADPFConfig, get_preset  # noqa: E402
from adpf.data.prepared import images_to_tensor  # noqa: E402
from adpf.data.synthetic import make_synthetic_faces  # noqa: E402
from adpf.networks import build_model  # noqa: E402
from adpf.train import Stage, stage_loss, trained_parameters  # noqa: E402

CASES = {"adpf": {}, "plain attention": {"attention_impl": "plain"}, "plain_cnn": {"variant": "plain_cnn"}}

# A preset shrunk to a few pixels and channels, for smoke tests of the benchmark itself.
TINY = dict(image_size=16, stem_channels=(4, 8), x_size=8, x_channels=10, key_channels=4, value_channels=4,
            fusion_channels=(4, 4, 4, 4, 4), patch_size=8, patch_channels=4)

# FlopCounterMode knows the CUDA attention kernels but not the CPU one; count it the same way
# (the formulas receive shapes).
if torch.ops.aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:
    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flop(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)


@dataclass
class Settings:
    """How to run the networks: device, batch, bf16 autocast, channels-last, torch.compile, timing."""

    device: torch.device
    batch_size: int
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    warmup: int = 3
    repeats: int = 10
    calls: int = 1  # calls per timed round (several on a GPU, so launches overlap the work)
    clock: str = "wall"  # "process": this process's CPU seconds (CPU runs on a shared machine)

    def describe(self) -> str:
        mode = f"torch.compile ({self.compile_backend})" if self.compile else "eager"
        clock = "wall-clock" if self.clock == "wall" else "process CPU time"
        return (f"batch {self.batch_size}, {'bf16 autocast' if self.bf16 else 'fp32'}, "
                f"{'channels-last' if self.channels_last else 'contiguous'}, {mode}; {clock}, median of "
                f"{self.repeats} rounds of {self.calls} call(s) after {self.warmup} warm-up call(s)")


@dataclass
class Measurement:
    """One network's numbers (None where it does not apply or could not be measured)."""

    train: dict[str, float | None] = field(default_factory=dict)  # stage -> images/s
    train_memory: dict[str, float | None] = field(default_factory=dict)  # stage -> MiB
    train_flops: dict[str, float | None] = field(default_factory=dict)  # stage -> FLOPs per image
    attention_ms: float | None = None  # RMHHA forward + backward on a batch of X
    inference: float | None = None  # images/s
    latency_ms: float | None = None
    latency_aligned_ms: float | None = None
    forward_flops: float | None = None  # per image


# --- clocks, memory, FLOPs --------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fns: dict[str, Callable[[], object]], settings: Settings,
                   calls: int | None = None) -> dict[str, float]:
    """Median seconds per call of each function over ``settings.repeats`` rounds (``settings.clock``).

    The functions' rounds are interleaved (round 1 of each, then round 2 of each, …), so a machine
    whose load changes during the run slows them alike and their ratios stay fair.
    """
    calls = calls or settings.calls
    clock = time.perf_counter if settings.clock == "wall" else time.process_time
    for fn in fns.values():
        for _ in range(settings.warmup):
            fn()
    synchronize(settings.device)
    rounds: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(settings.repeats):
        for key, fn in fns.items():
            start = clock()
            for _ in range(calls):
                fn()
            synchronize(settings.device)
            rounds[key].append((clock() - start) / calls)
    return {key: statistics.median(times) for key, times in rounds.items()}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _host_memory_reader() -> tuple[Callable[[], int], str]:
    """Bytes of host memory in use now, and how they are read.

    glibc's ``mallinfo2`` (bytes malloc has handed out and not taken back, every arena): torch's
    CPU tensors come from malloc, and the count falls when they are freed, so it shows each step's
    own peak. Without glibc, the resident set size (psutil, the ``bench`` extra), which freed
    memory kept for reuse hides, so its growth is only a lower bound.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2

        def heap() -> int:
            info = libc.mallinfo2()
            return info.uordblks + info.hblkhd

        return heap, "heap bytes in use (glibc mallinfo2)"
    import psutil
    process = psutil.Process()
    return (lambda: process.memory_info().rss), "resident set size (psutil; a lower bound)"


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory one call of ``fn`` adds to what was in use before, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: ``_host_memory_reader`` sampled every
    millisecond on a thread while ``fn`` runs (torch releases the GIL in its kernels).
    """
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    read, _ = _host_memory_reader()
    before, peak, done = read(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], read())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak[0], read()) - before) / 2 ** 20


def flops_of(fn: Callable[[], object]) -> int:
    """FLOPs ``fn`` executes (FlopCounterMode; 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_tflops(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                  repeats: int = 10) -> float:
    """Measured TFLOP/s of an n×n×n matrix product on random data (the card's practical ceiling)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    settings = Settings(device=device, batch_size=1, warmup=3, repeats=repeats)
    return 2 * n ** 3 / median_seconds({"matmul": lambda: a @ b}, settings)["matmul"] / 1e12


# --- the networks and their steps ---------------------------------------------------------------

def case_config(preset: str, case: str, tiny: bool) -> ADPFConfig:
    return get_preset(preset, **(TINY if tiny else {}), **CASES[case])


def sample_batch(config: ADPFConfig, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic faces ``(B, 3, S, S)`` in [0, 1] and their ages: real content, so boxes come from real maps."""
    faces = make_synthetic_faces(batch_size, config.image_size, seed=0)
    images = images_to_tensor(faces.images)
    ages = torch.tensor(faces.params["age"].to_numpy(), dtype=torch.float32)
    return images.to(device), ages.to(device)


def network(config: ADPFConfig, settings: Settings) -> torch.nn.Module:
    """``build_model(config)`` from seed 0 (so adpf and plain attention share weights and patches), placed."""
    torch.manual_seed(0)
    model = build_model(config).to(settings.device)
    return model.to(memory_format=torch.channels_last) if settings.channels_last else model


def autocast(settings: Settings):
    return torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=settings.bf16)


def compiled(module: torch.nn.Module, settings: Settings) -> torch.nn.Module:
    return torch.compile(module, backend=settings.compile_backend) if settings.compile else module


def train_step(config: ADPFConfig, stage_name: str, images: torch.Tensor, ages: torch.Tensor,
               settings: Settings) -> Callable[[], None]:
    """One optimiser step of a training stage, as ``train.run_stage`` takes it (without its logging)."""
    model = network(config, settings)
    stage = Stage(stage_name, config, 0, "benchmark")
    if stage_name == "fusion":
        model.freeze_attention()
        model.attention_net = compiled(model.attention_net, settings)
        model.fusion_net = compiled(model.fusion_net, settings)
        forward = model
    else:
        forward = compiled(model.attention_net if stage_name == "attention" else model, settings)
    model.train()
    optimizer = torch.optim.SGD(trained_parameters(stage, model), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        with autocast(settings):
            output = forward(images)
        loss = stage_loss(stage, output, ages).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def attention_step(config: ADPFConfig, batch_size: int, settings: Settings) -> Callable[[], None]:
    """Forward and backward of RMHHA alone, on a random X ``(B, x_channels, x_size, x_size)``."""
    rmhha = compiled(network(config, settings).attention_net.rmhha, settings)
    x = torch.randn(batch_size, config.x_channels, config.x_size, config.x_size, device=settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()

    def step() -> None:
        with autocast(settings):
            maps = rmhha(x).weighted
        maps.float().sum().backward()

    return step


def inference(config: ADPFConfig, settings: Settings) -> torch.nn.Module:
    model = network(config, settings).eval()
    if config.variant == "adpf":
        model.attention_net = compiled(model.attention_net, settings)
        model.fusion_net = compiled(model.fusion_net, settings)
        return model
    return compiled(model, settings)


def aligned_photo(image_size: int) -> tuple[Callable[[], torch.Tensor], str | None]:
    """A function aligning scikit-image's astronaut photo with dlib → ``(1, 3, S, S)``, or None and why not."""
    try:
        from skimage import data as skdata

        from adpf.data.align import align_face
        photo = skdata.astronaut()
        align_face(photo, image_size)
    except Exception as e:  # dlib or its model missing on this machine
        return None, f"{type(e).__name__}: {e}"

    def align() -> torch.Tensor:
        face = align_face(photo, image_size).image
        return images_to_tensor(face)[None]

    return align, None


def stages_of(config: ADPFConfig) -> list[str]:
    return ["attention", "fusion"] if config.variant == "adpf" else ["single"]


def measure(configs: dict[str, ADPFConfig], images: torch.Tensor, ages: torch.Tensor, settings: Settings,
            align: Callable[[], torch.Tensor] | None) -> dict[str, Measurement]:
    """Every network's numbers, the timed rounds of the networks interleaved (``median_seconds``)."""
    results = {case: Measurement() for case in configs}
    if settings.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    steps = {(case, stage): train_step(config, stage, images, ages, settings)
             for case, config in configs.items() for stage in stages_of(config)}
    for (case, stage), seconds in median_seconds(steps, settings).items():
        results[case].train[stage] = len(images) / seconds
    for (case, stage), step in steps.items():
        results[case].train_memory[stage] = peak_memory_mib(step, settings.device)
        results[case].train_flops[stage] = None if settings.compile else flops_of(step) / len(images)
    del steps
    attention = {case: attention_step(config, len(images), settings)
                 for case, config in configs.items() if config.variant == "adpf"}
    for case, seconds in median_seconds(attention, settings).items():
        results[case].attention_ms = 1e3 * seconds
    del attention
    models = {case: inference(config, settings) for case, config in configs.items()}
    one = images[:1]
    with torch.no_grad(), autocast(settings):
        batch = median_seconds({case: functools.partial(model, images) for case, model in models.items()}, settings)
        single = median_seconds({case: functools.partial(model, one) for case, model in models.items()},
                                settings, calls=1)
        for case, model in models.items():
            results[case].inference = len(images) / batch[case]
            results[case].latency_ms = 1e3 * single[case]
            if not settings.compile:
                results[case].forward_flops = flops_of(functools.partial(model, images)) / len(images)
        if align is not None:
            aligned = median_seconds({case: functools.partial(_aligned_forward, model, align, settings.device)
                                      for case, model in models.items()}, settings, calls=1)
            for case, seconds in aligned.items():
                results[case].latency_aligned_ms = 1e3 * seconds
    return results


def _aligned_forward(model: torch.nn.Module, align: Callable[[], torch.Tensor], device: torch.device):
    return model(align().to(device))


# --- the table --------------------------------------------------------------------------------

def both_stages(m: Measurement) -> float | None:
    """Images/s of an epoch of each stage (one stage for the baseline)."""
    rates = list(m.train.values())
    return None if any(r is None for r in rates) else 1 / sum(1 / r for r in rates)


ROWS: list[tuple[str, Callable[[Measurement], float | None], bool, str]] = [
    # label, value, higher is better, format
    ("train stage 1 (AttentionNet), images/s", lambda m: m.train.get("attention", m.train.get("single")), True, ".1f"),
    ("train stage 2 (FusionNet), images/s", lambda m: m.train.get("fusion", m.train.get("single")), True, ".1f"),
    ("train both stages, images/s", both_stages, True, ".1f"),
    ("RMHHA alone, forward + backward, ms per batch", lambda m: m.attention_ms, False, ".2f"),
    ("inference, images/s", lambda m: m.inference, True, ".1f"),
    ("latency, one photo, ms", lambda m: m.latency_ms, False, ".2f"),
    ("latency, one photo + dlib alignment, ms", lambda m: m.latency_aligned_ms, False, ".2f"),
    ("peak memory, train stage 1, MiB", lambda m: m.train_memory.get("attention", m.train_memory.get("single")),
     False, ".1f"),
    ("peak memory, train stage 2, MiB", lambda m: m.train_memory.get("fusion", m.train_memory.get("single")),
     False, ".1f"),
    ("forward GFLOP / image", lambda m: _giga(m.forward_flops), False, ".4g"),
    ("train step stage 1 GFLOP / image", lambda m: _giga(m.train_flops.get("attention", m.train_flops.get("single"))),
     False, ".4g"),
    ("train step stage 2 GFLOP / image", lambda m: _giga(m.train_flops.get("fusion", m.train_flops.get("single"))),
     False, ".4g"),
]


def _giga(flops: float | None) -> float | None:
    return None if flops is None else flops / 1e9


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _ratio(ours: float | None, other: float | None, higher_better: bool) -> float | None:
    if ours is None or other is None or ours <= 0 or other <= 0:
        return None
    return ours / other if higher_better else other / ours


def format_table(preset: str, results: dict[str, Measurement]) -> str:
    """A Markdown table: each measurement for the three networks, with the ratios."""
    header = ["measurement", "adpf", "plain attention", "adpf vs plain (>1: better)", "plain_cnn",
              "adpf ÷ plain_cnn (cost)"]
    lines = [f"**preset {preset}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ours, plain, cnn = results["adpf"], results["plain attention"], results["plain_cnn"]
    for label, value, higher_better, spec in ROWS:
        a, p, c = value(ours), value(plain), value(cnn)
        gain = _ratio(a, p, higher_better)
        cost = _ratio(c, a, higher_better)  # adpf's time/memory/FLOPs over the baseline's
        lines.append(f"| {label} | {_fmt(a, spec)} | {_fmt(p, spec)} | {_fmt(gain, '.2f')} | "
                     f"{_fmt(c, spec)} | {_fmt(cost, '.2f')} |")
    return "\n".join(lines)


def machine() -> str:
    """The device's name, and the CPU's, as this run saw them."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"CPU {cpu} ({torch.get_num_threads()} torch threads)"
    if torch.cuda.is_available():
        text = f"GPU {torch.cuda.get_device_name()}; " + text
    return text


# --- the command --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this script."""
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["cpu", "paper"],
                        help="presets to measure (default: cpu paper)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, help="images per step (default: 256 on a GPU; on a CPU "
                                                       "32 for the cpu preset, 8 for paper)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls before timing (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is shown (default: 5)")
    parser.add_argument("--calls", type=int, help="calls per timed round (default: 5 on a GPU, 1 on a CPU)")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="wall-clock time (default), or this process's CPU time: on a CPU shared with "
                             "other work it leaves out the time spent waiting for a core (CPU only)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as training on a GPU does)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (FLOPs not counted)")
    parser.add_argument("--no-align", action="store_true", help="skip the latency with dlib alignment")
    parser.add_argument("--matmul", action="store_true", help="also measure the bf16 matmul TFLOP/s of the device")
    parser.add_argument("--tiny", action="store_true", help="shrink every preset to a few pixels (smoke tests)")
    parser.add_argument("--out", help="also write the tables (Markdown) to this file")
    parser.add_argument("--json", help="also write every number to this JSON file")


def default_batch_size(preset: str, device: torch.device) -> int:
    if device.type == "cuda":
        return 256
    return 32 if preset == "cpu" else 8


def run(args: argparse.Namespace) -> int:
    """Measure every preset, print the tables (and write them where asked)."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: this torch sees no CUDA device")
        torch.backends.cudnn.benchmark = True
        if args.clock != "wall":
            raise ValueError("--clock process measures CPU work only; use the wall clock on a GPU")
    parts = [f"# adpf benchmark, {time.strftime('%Y-%m-%d')}", "", f"Machine: {machine()}; torch {torch.__version__}; "
             f"device {device}."]
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "torch": torch.__version__,
              "device": str(device), "presets": {}}
    if args.matmul:
        tflops = matmul_tflops(device, n=8192 if device.type == "cuda" else 1024, repeats=5)
        record["matmul_bf16_tflops"] = tflops
        parts.append(f"bf16 matmul ({'8192' if device.type == 'cuda' else '1024'}³, random data): "
                     f"{tflops:.1f} TFLOP/s.")
    print("\n".join(parts), flush=True)
    for preset in args.presets:
        settings = Settings(device=device, batch_size=args.batch_size or default_batch_size(preset, device),
                            bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                            warmup=args.warmup, repeats=args.repeats, clock=args.clock,
                            calls=args.calls or (5 if device.type == "cuda" else 1))
        base = case_config(preset, "adpf", args.tiny)
        align, no_align = (None, "skipped (--no-align)") if args.no_align else aligned_photo(base.image_size)
        images, ages = sample_batch(base, settings.batch_size, device)
        results = measure({case: case_config(preset, case, args.tiny) for case in CASES}, images, ages,
                          settings, align)
        table = format_table(preset + (" (tiny)" if args.tiny else ""), results)
        notes = [f"{settings.describe()}.",
                 "Peak memory above what was in use before the step: " +
                 ("torch.cuda.max_memory_allocated." if device.type == "cuda" else
                  f"{_host_memory_reader()[1]}, sampled every ms."),
                 "FLOPs: FlopCounterMode, executed operations (2 per multiply-add)."]
        if no_align:
            notes.append(f"Latency with alignment not measured: {no_align}.")
        text = table + "\n\n" + "\n".join(f"- {n}" for n in notes)
        print("\n" + text, flush=True)
        parts += ["", text]
        record["presets"][preset] = {"settings": settings.describe(), "tiny": args.tiny,
                                     "results": {k: v.__dict__ for k, v in results.items()}}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(parts) + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
