"""The two patch-stream designs (``config.patch_stream``; book/open_choices.md, choice 8) against each other.

    python benchmarks/patch_streams.py [--seeds 0 1 2] [--repeats 7] [--no-train] [--out FILE]

1. Parameter counts of FusionNet and of ADPF, both presets, both designs.
2. Forward + backward time of FusionNet with its patches, per batch (CPU, interleaved rounds,
   median; batch 32 for ``cpu``, 8 for ``paper``, as ``benchmarks/benchmark.py`` takes on a CPU).
3. ADPF trained with each design on the book's first setting (``adpf.setting.book_setting("cpu-sgd")``:
   the ``cpu`` preset, the ``book`` recipe, the drawn default faces and their subject-exclusive
   split), one training seed after another. Stage 1 does not read the field, so both designs
   of a seed start stage 2 from the same cached AttentionNet (their stage-1 keys are checked
   equal); only stage 2 differs. Test and validation MAE, mean ± std over the seeds.

Everything runs in one process with 1 torch thread (``--threads``), so the code version, and
with it every cache key, is the same for all runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from adpf.cache import code_version  # noqa: E402
from adpf.config import get_preset  # noqa: E402
from adpf.losses import age_estimation_loss  # noqa: E402
from adpf.networks import ADPF, FusionNet, count_parameters  # noqa: E402
from adpf.setting import book_setting  # noqa: E402
from adpf.train import hardware, train  # noqa: E402

DESIGNS = ("resize", "strided")


def parameter_rows() -> list[str]:
    rows = ["| preset | design | FusionNet | of it, patch streams | ADPF total |", "|---|---|---|---|---|"]
    for preset in ("cpu", "paper"):
        for design in DESIGNS:
            config = get_preset(preset, patch_stream=design)
            fusion = FusionNet(config)
            rows.append(f"| {preset} | {design} | {count_parameters(fusion):,} | "
                        f"{count_parameters(fusion.patch_streams):,} | {count_parameters(ADPF(config)):,} |")
    return rows


def timing_rows(repeats: int) -> list[str]:
    """Median ms of FusionNet forward + backward per batch, designs in interleaved rounds."""
    rows = ["| preset | batch | resize, ms | strided, ms | strided ÷ resize |", "|---|---|---|---|---|"]
    for preset, batch in (("cpu", 32), ("paper", 8)):
        torch.manual_seed(0)
        base = get_preset(preset)
        x = torch.rand(batch, 3, base.image_size, base.image_size)
        patches = torch.rand(batch, base.heads, 3, base.patch_size, base.patch_size)
        ages = torch.rand(batch) * 80
        nets = {d: FusionNet(base.replace(patch_stream=d)).train() for d in DESIGNS}

        def step(net, x=x, patches=patches, ages=ages, base=base):  # this preset's batch
            net.zero_grad(set_to_none=True)
            age_estimation_loss(net(x, patches).logits, ages, base).total.backward()

        times = {d: [] for d in DESIGNS}
        for net in nets.values():
            step(net)  # warm-up
        for _ in range(repeats):
            for design, net in nets.items():
                start = time.perf_counter()
                step(net)
                times[design].append(time.perf_counter() - start)
        r, s = (1e3 * statistics.median(times[d]) for d in DESIGNS)
        rows.append(f"| {preset} | {batch} | {r:.1f} | {s:.1f} | {s / r:.2f} |")
    return rows


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}"


def training_rows(seeds: list[int], log) -> tuple[list[str], dict, list[str]]:
    runs, notes = {d: [] for d in DESIGNS}, []
    setting = None
    for seed in seeds:
        setting = book_setting("cpu-sgd", seed=seed, device="cpu")
        keys = {}
        for design in DESIGNS:
            start = time.perf_counter()
            result = train(setting.config.replace(patch_stream=design), setting.data, setting.split,
                           setting.recipe, progress=False)
            keys[design] = result.stage_keys["attention"]
            row = {"seed": seed, "test_mae": result.metrics["test"]["mae"], "val_mae": result.metrics["val"]["mae"],
                   "stage_seconds": result.timings, "cached": result.cached,
                   "wall_seconds": time.perf_counter() - start, "stage_keys": result.stage_keys}
            runs[design].append(row)
            log(f"seed {seed} {design}: test MAE {row['test_mae']:.3f}, val MAE {row['val_mae']:.3f}, "
                f"stages {({k: round(v) for k, v in result.timings.items()})} s, cached {result.cached}")
        if keys["resize"] != keys["strided"]:
            raise RuntimeError(f"seed {seed}: the designs got different stage-1 models ({keys})")
    rows = ["| design | test MAE, mean ± std | val MAE, mean ± std | per seed (test / val) | stage 2, s per seed |",
            "|---|---|---|---|---|"]
    for design in DESIGNS:
        r = runs[design]
        per_seed = "; ".join(f"{x['seed']}: {x['test_mae']:.2f} / {x['val_mae']:.2f}" for x in r)
        fusion_s = statistics.mean(x["stage_seconds"]["fusion"] for x in r)
        rows.append(f"| {design} | {mean_std([x['test_mae'] for x in r])} | {mean_std([x['val_mae'] for x in r])} | "
                    f"{per_seed} | {fusion_s:.0f} |")
    diff = [s["test_mae"] - r["test_mae"] for s, r in zip(runs["strided"], runs["resize"])]
    vdiff = [s["val_mae"] - r["val_mae"] for s, r in zip(runs["strided"], runs["resize"])]
    notes.append(f"strided − resize, paired by seed: test {mean_std(diff)}, val {mean_std(vdiff)} "
                 "(negative: the strided streams predict better).")
    shown = [abs(statistics.mean(d)) > (statistics.stdev(d) if len(d) > 1 else float("inf")) for d in (diff, vdiff)]
    notes.append("Verdict: " + ("the strided streams are better by more than the paired spread on both splits"
                                if all(shown) and statistics.mean(vdiff) < 0 else
                                "the difference is within the seeds' spread on " +
                                " and ".join(n for n, ok in zip(("test", "validation"), shown) if not ok) +
                                ": this budget does not tell the designs apart"))
    meta = setting.data.meta
    notes += [f"Data: {len(setting.data):,} drawn default faces ({setting.data.root.name}); split by person "
              f"train/val/test {len(setting.split.train)}/{len(setting.split.val)}/{len(setting.split.test)} "
              f"images ({setting.split.name}, ages {meta['age'].min():.0f}–{meta['age'].max():.0f}).",
              f"Recipe: book ({json.dumps({k: v for k, v in setting.recipe.to_dict().items() if k != 'seed'})}); "
              f"training seeds {seeds}.",
              "Stage 1 (AttentionNet) per seed is shared by both designs (equal stage-1 keys, trained once).",
              f"Code version {code_version()}."]
    return rows, runs, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per design (default 7)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-train", action="store_true", help="parameter counts and timings only")
    parser.add_argument("--out", type=Path, help="write the Markdown record here")
    parser.add_argument("--json", type=Path, help="write every training run's numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "?"
    hw = hardware()
    lines = [f"# Patch streams: strided against resize ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/patch_streams.py{'' if args.seeds == [0, 1, 2] else ' --seeds ' + ' '.join(map(str, args.seeds))}`"
             f" at commit {commit}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
             f"{hw['processor']}, {hw['cpu_count']} cores (shared; load average {__import__('os').getloadavg()[0]:.1f} "
             "at the start).", ""]

    def log(text: str) -> None:
        print(text, flush=True)

    for title, rows in (("Parameters", parameter_rows()), ("FusionNet forward + backward per batch, CPU",
                                                           timing_rows(args.repeats))):
        lines += [f"## {title}", "", *rows, ""]
        log("\n".join([f"## {title}", *rows]))
    if not args.no_train:
        rows, runs, notes = training_rows(args.seeds, log)
        lines += ["## ADPF, the book's first setting (cpu preset, book recipe), 3 seeds", "", *rows, "",
                  *[f"- {n}" for n in notes], ""]
        log("\n".join(rows + notes))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(runs, indent=2) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
