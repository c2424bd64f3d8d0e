"""Probe ADPF's stage 2 alone in the book's first (SGD) setting: another optimiser, more epochs, another main stream.

Stage 2 (FusionNet, AttentionNet frozen) is what keeps ADPF behind its AttentionNet on the drawn
faces at the book's budget (``benchmarks/results/recipes-2026-12-06.md``). This script trains it
again with one thing changed and everything else as that setting's ADPF of ``--seed``
(``adpf.setting.book_setting("cpu-sgd")``): the same faces, split and stage 1, which it reads from the
project's cache (``.adpf-cache``; train the book's model first, e.g. ``adpf experiments ablation
--data synthetic --synthetic-n 3000 --recipe book --rows ADPF --seeds 0``). Stage 1 is linked into
a cache folder of the probe's own, so a changed stage 2 never takes the place of the book's.

- ``--set-recipe FIELD=VALUE`` (optimizer, lr, weight_decay, ...): changed for stage 2 only. The
  recipe has one optimiser for both stages, and a changed value would change stage 1's cache key
  as well, so the change is made where stage 2 builds its optimiser and schedule.
- ``--fusion-epochs N``: stage 2's epochs (stage 1 keeps the recipe's).
- ``--set FIELD=VALUE``: a FusionNet field of ``ADPFConfig`` (e.g. ``fusion_stem_stride=1``).
- ``--residual-stages``: every main-stream stage a ResNet basic block (``adpf.networks.BasicBlock``,
  the reference network's) instead of two plain conv blocks.

Prints the test and validation MAE, the kept epoch and the training / validation MAE of every
epoch, and writes them as JSON with ``--out``::

    python benchmarks/stage2_probe.py --seed 0 --set-recipe optimizer=adamw --set-recipe lr=0.001 \\
        --set-recipe weight_decay=0.05
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def link_stage1(main: Path, probe: Path) -> None:
    """``probe`` as a cache folder that shares ``main``'s stage-1 runs and prepared data."""
    (probe / "runs").mkdir(parents=True, exist_ok=True)
    for run in (main / "runs").glob("attention-*"):
        if not (probe / "runs" / run.name).exists():
            (probe / "runs" / run.name).symlink_to(run.resolve())
    if not (probe / "data").exists() and (main / "data").exists():
        (probe / "data").symlink_to((main / "data").resolve())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set-recipe", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--fusion-epochs", type=int)
    parser.add_argument("--residual-stages", action="store_true")
    parser.add_argument("--cache", type=Path, default=ROOT / ".adpf-cache", help="the cache stage 1 is read from")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)

    from adpf.cache import digest
    from adpf.cli import field_values
    from adpf.config import ADPFConfig
    from adpf.recipes import Recipe
    recipe_changes = field_values(args.set_recipe, Recipe, "--set-recipe")
    config_changes = field_values(args.set, ADPFConfig, "--set")
    probe = digest([args.seed, recipe_changes, config_changes, args.fusion_epochs, args.residual_stages])
    probe_cache = Path(os.environ.get("TMPDIR", "/tmp")) / f"adpf-stage2-probe-{probe}"
    link_stage1(args.cache.resolve(), probe_cache)
    os.environ["ADPF_CACHE_DIR"] = str(probe_cache)

    import torch

    import adpf.train as training
    from adpf.networks import BasicBlock
    from adpf.setting import book_setting

    build, optimizer, scheduler = training.build_stage_model, training.make_optimizer, training.make_scheduler
    building = {"stage": None}  # the stage whose optimiser and schedule are built next

    def stage2_only(make):
        def made(recipe, *rest):
            return make(recipe.replace(**recipe_changes) if building["stage"] == "fusion" else recipe, *rest)
        return made

    def build_stage_model(stage, previous, process, recipe):
        model = build(stage, previous, process, recipe)
        building["stage"] = stage.name
        if stage.name == "fusion" and args.residual_stages:
            fusion = model.fusion_net
            for k, plain in enumerate(fusion.stages):
                conv = plain[0][0]
                fusion.stages[k] = BasicBlock(conv.in_channels, conv.out_channels, conv.stride[0]).to(process.device)
        return model

    training.make_optimizer, training.make_scheduler = stage2_only(optimizer), stage2_only(scheduler)
    training.build_stage_model = build_stage_model
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    setting = book_setting("cpu-sgd", None, None, "cpu", args.seed)
    if args.fusion_epochs:
        setting = dataclasses.replace(setting, recipe=setting.recipe.replace(fusion_epochs=args.fusion_epochs))
    start = time.time()
    result = setting.train("adpf", **config_changes)
    if not (probe_cache / "runs" / f"attention-{result.stage_keys['attention']}").is_symlink():
        print(f"note: stage 1 was not in {args.cache} and was trained here", file=sys.stderr)
    out = {"seed": args.seed, "recipe_changes": recipe_changes, "config_changes": config_changes,
           "fusion_epochs": setting.recipe.fusion_epochs, "residual_stages": args.residual_stages,
           "test_mae": result.metrics["test"]["mae"], "val_mae": result.metrics["val"]["mae"],
           "best_epochs": result.best_epochs, "seconds": time.time() - start,
           "curve": [(e["train_mae"], e["val_mae"]) for e in result.history["fusion"]]}
    print(f"seed {args.seed} {recipe_changes or ''} {config_changes or ''} stage 2 {out['fusion_epochs']} epochs"
          f"{' residual stages' if args.residual_stages else ''}: test {out['test_mae']:.2f}, val {out['val_mae']:.2f}, "
          f"kept epoch {result.best_epochs['fusion']}, {out['seconds']:.0f} s")
    print("  train / val MAE per epoch: " + " ".join(f"{t:.1f}/{v:.1f}" for t, v in out["curve"]))
    if args.out:
        from adpf.cache import write_json
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
