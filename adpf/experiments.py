"""The paper's tables as tidy DataFrames and as recorded runs over seeds: the ablation study
(Table VII and two baselines), the heads sweep (Table IX), protocol runs aggregated over folds,
and the statistics that read them (mean ± std over seeds, a verdict that calls a difference
within the seeds' spread a tie, the paper's claims beside the measurements).

Every row comes from ``train.train``, which loads what is already in the cache, so a table
that was built once is rebuilt for free, and rows that share a stage (ADPF, ADPF w/o ranking
and AttentionNet alone share stage 1) train it once.

A **record** is a table written as JSON (``adpf experiments ablation|heads --seeds 0 1 2
--record FILE``), rewritten after every finished (model, seed) row, so a stopped run resumes
where it stopped::

    kind            "ablation" or "heads"
    command, date   the command line and when the record was last written
    code_version    ``adpf.cache.code_version()`` of the code that trained the rows
    versions, hardware
    data            name, count, image_size, subjects, content (a hash of the files)
    split           name, sizes, hash;  recipe (its seed is each row's), config (the base)
    constant        always answering the mean training age: its test and validation MAE
    test_on         with ``--test-on``: the second dataset's identity and the constant's MAE on it
    rows            one per (model, seed): model, seed, variant, heads, mae (test), val_mae,
                    cs5, parameters, train_seconds, images_per_s_<stage>, head_overlap,
                    region_share, region_share_p1, region_area (attention variants with
                    ``--attention``; region_* on data with region masks), test_on_mae and
                    test_on_cs5 (with ``--test-on``), history (per stage, per epoch: epoch,
                    train_mae, val_mae, seconds), stage_keys (the cache keys of its stages:
                    a row with a chapter's key is that chapter's model)

A record resumes only from rows made by the same code on the same data, split and recipe; a
record of other code is started afresh. Records that the book reads are made from the
repository's root, with the commands of `BOOK_RECORDS`.
"""
from __future__ import annotations

import datetime
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

import adpf
from adpf.cache import code_version, data_identity, digest, read_json, split_identity, write_json
from adpf.checkpoint import load_model
from adpf.config import ADPFConfig, get_preset
from adpf.data.prepared import Prepared, PreparedFaces, load_prepared
from adpf.evaluate import attention_report, constant_baseline, mae, predict, summarize
from adpf.networks import build_model, count_parameters
from adpf.recipes import SPEED_FIELDS, Recipe, get_recipe
from adpf.train import TrainResult, as_split, hardware, train, versions

#: The rows of Table VII (and the two baselines), as changes to the base config.
ABLATIONS: dict[str, dict] = {
    "ADPF": {},
    "ADPF w/SA": {"attention": "self_sum"},
    "ADPF w/o ranking": {"ranking": False},
    "ADPF w/o diversity loss": {"diversity_weight": 0.0},
    "AttentionNet alone": {"variant": "attention_only"},
    "plain CNN": {"variant": "plain_cnn"},
    "fixed patches": {"variant": "fixed_patches"},
    "ResNet-18 (reference)": {"variant": "resnet18"},
    # not the paper's, and asked for by name only: every face cropped at each rank's median box
    # over the training faces (open choice 19)
    "ADPF (placed boxes)": {"patch_placement": "rank_median"},
}

#: The rows a table trains when none are named: Table VII, the baselines and the reference.
DEFAULT_ROWS: tuple[str, ...] = tuple(name for name in ABLATIONS if name != "ADPF (placed boxes)")

#: Where the book's records live (in a source checkout), and the command that makes each, run
#: from the repository's root. The synthetic ones are at the book's setting (``adpf.setting``,
#: profile "cpu"), so their seed-0 rows are the book's models.
RESULTS = Path(adpf.__file__).resolve().parents[1] / "benchmarks" / "results"
BOOK_RECORDS: dict[str, str] = {
    "ablation-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                          "--attention --seeds 0 1 2 --record benchmarks/results/ablation-synthetic.json",
    "heads-synthetic": "adpf experiments heads --data synthetic --synthetic-n 3000 --recipe book "
                       "--heads-list 1,2,3,5,6 --seeds 0 1 2 --record benchmarks/results/heads-synthetic.json",
    # The same drawn faces with every stage trained to a plateau (40 + 40 epochs, cosine to zero):
    # whether FusionNet adds once nothing is cut short (benchmarks/results/recipes-2026-12-04.md)
    "converged-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                           "--epochs 40,40 --rows 'ADPF,AttentionNet alone,plain CNN,fixed patches' "
                           "--attention --seeds 0 1 2 --record benchmarks/results/converged-synthetic.json",
    # The same, with FusionNet's first stage at full resolution (its stem without stride, as
    # AttentionNet's first block): what the main stream gains, and whether the patches keep it
    "converged-fullres-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                                   "--epochs 40,40 --rows 'ADPF,plain CNN,fixed patches' --set fusion_stem_stride=1 "
                                   "--attention --seeds 0 1 2 --record benchmarks/results/converged-fullres-synthetic.json",
    # UTKFace (the shared 9,690 faces, dlib-aligned at 64 px: see benchmarks/results/README.md),
    # every model also tested on the All-Age-Faces photos aligned from the wild (train on one
    # set, predict on another); the cpu recipe; ADPF, the baselines and the reference network
    # (the Table VII ablations are measured on the drawn faces, where the true regions are known)
    "ablation-utkface": "adpf experiments ablation --data data/utkface-64 --recipe cpu "
                        "--rows 'ADPF,AttentionNet alone,plain CNN,fixed patches,ResNet-18 (reference)' "
                        "--seeds 0 1 2 --test-on data/aaf-64 --attention --record benchmarks/results/ablation-utkface.json",
    # The same faces with every FusionNet given 40 epochs (AttentionNet keeps 15), stage 2's
    # boxes found once (open choice 17): whether more epochs let FusionNet add on real faces
    "longer-utkface": "adpf experiments ablation --data data/utkface-64 --recipe cpu --epochs 15,40 "
                      "--set-recipe fusion_boxes=once --rows 'ADPF,AttentionNet alone,plain CNN,fixed patches' "
                      "--seeds 0 1 2 --test-on data/aaf-64 --record benchmarks/results/longer-utkface.json",
    # The longer record's ADPF and AttentionNet alone with stage 1's queries and keys started at
    # unit logits (open choice 18): whether heads that attend somewhere give patches that help
    "qk-init-utkface": "adpf experiments ablation --data data/utkface-64 --recipe cpu --epochs 15,40 "
                       "--set-recipe fusion_boxes=once --set-recipe qk_init=unit_logits "
                       "--rows 'ADPF,AttentionNet alone' --seeds 0 1 2 --test-on data/aaf-64 --attention "
                       "--record benchmarks/results/qk-init-utkface.json",
    # The longer record's ADPF again, and on the same stage 1 an ADPF that crops every face at
    # each rank's median box over the training faces (open choice 19, not the paper's): whether
    # boxes that hold still let FusionNet add
    "placed-boxes-utkface": "adpf experiments ablation --data data/utkface-64 --recipe cpu --epochs 15,40 "
                            "--set-recipe fusion_boxes=once --rows 'ADPF,ADPF (placed boxes)' "
                            "--seeds 0 1 2 --test-on data/aaf-64 --attention "
                            "--record benchmarks/results/placed-boxes-utkface.json",
    # The drawn faces at the book's budget, the paper's ADPF beside the same stage 1 with placed
    # boxes (open choice 19): whether boxes that follow each face pay where the faces move
    "placed-boxes-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                              "--rows 'ADPF,ADPF (placed boxes),AttentionNet alone,fixed patches' "
                              "--attention --seeds 0 1 2 --record benchmarks/results/placed-boxes-synthetic.json",
    # The drawn faces at the book's budget with AdamW for both stages in place of SGD (the values
    # measured on UTKFace in benchmarks/results/recipes-2026-12-04.md; the clipping kept), beside
    # the SGD rows of placed-boxes-synthetic: how much of the table is the optimiser's speed
    "adamw-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                       "--set-recipe optimizer=adamw --set-recipe lr=0.001 --set-recipe weight_decay=0.05 "
                       "--rows 'ADPF,AttentionNet alone,plain CNN,fixed patches' --attention --seeds 0 1 2 "
                       "--record benchmarks/results/adamw-synthetic.json",
    # The same change on UTKFace with the longer record's recipe, ADPF and AttentionNet alone,
    # beside the SGD rows of placed-boxes-utkface (ADPF) and longer-utkface (AttentionNet alone)
    "adamw-utkface": "adpf experiments ablation --data data/utkface-64 --recipe cpu --epochs 15,40 "
                     "--set-recipe fusion_boxes=once --set-recipe optimizer=adamw --set-recipe lr=0.001 "
                     "--set-recipe weight_decay=0.05 --rows 'ADPF,AttentionNet alone' --seeds 0 1 2 "
                     "--test-on data/aaf-64 --attention --record benchmarks/results/adamw-utkface.json",
    # The drawn faces with AdamW, stage 2 at 20 epochs (boxes found once) and FusionNet's main
    # stream at full resolution with residual stages: a main stream that learns as fast as
    # AttentionNet, and what the patches do to it, dynamic, fixed and placed
    "main-stream-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                             "--epochs 10,20 --set-recipe fusion_boxes=once --set-recipe optimizer=adamw "
                             "--set-recipe lr=0.001 --set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                             "--set fusion_block=residual --rows 'ADPF,ADPF (placed boxes),AttentionNet alone,"
                             "plain CNN,fixed patches' --attention --seeds 0 1 2 "
                             "--record benchmarks/results/main-stream-synthetic.json",
    # Table VII and the baselines at the book's setting (main-stream-synthetic's command, every
    # default row): the paper's ablation with a recipe whose FusionNet curves level out
    "main-stream-ablation-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 "
                                      "--recipe book --epochs 10,20 --set-recipe fusion_boxes=once "
                                      "--set-recipe optimizer=adamw --set-recipe lr=0.001 "
                                      "--set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                                      "--set fusion_block=residual --attention --seeds 0 1 2 "
                                      "--record benchmarks/results/main-stream-ablation-synthetic.json",
    # Table VII's ADPF, AttentionNet alone and plain CNN at the book's setting with the training
    # faces cut by windows of 80-100 % of their side and resized back (open choice 21, not the
    # paper's augmentation): whether a larger augmentation keeps the patches from being learned by heart
    "crop-scale-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                            "--epochs 10,20 --set-recipe fusion_boxes=once --set-recipe optimizer=adamw "
                            "--set-recipe lr=0.001 --set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                            "--set fusion_block=residual --set-recipe crop_scale=0.8 "
                            "--rows 'ADPF,AttentionNet alone,plain CNN' --attention --seeds 0 1 2 "
                            "--record benchmarks/results/crop-scale-synthetic.json",
    # Table IX (the heads sweep) again at the book's setting, main-stream-ablation-synthetic's
    # command: whether 5 or 6 heads are best once the recipe lets the models learn
    "main-stream-heads-synthetic": "adpf experiments heads --data synthetic --synthetic-n 3000 --recipe book "
                                   "--epochs 10,20 --set-recipe fusion_boxes=once --set-recipe optimizer=adamw "
                                   "--set-recipe lr=0.001 --set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                                   "--set fusion_block=residual --heads-list 1,2,3,5,6 --seeds 0 1 2 "
                                   "--record benchmarks/results/main-stream-heads-synthetic.json",
    # Table VII's ADPF at the book's setting with its patches regularised (open choice 22, not the
    # paper's): each face's patch features dropped at each stage with probability 0.5 in training,
    # or every training box shifted at every step by up to a quarter of its side; whether ADPF
    # generalises worse than its main stream alone because it leans on the patches of its training faces
    "patch-dropout-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                               "--epochs 10,20 --set-recipe fusion_boxes=once --set-recipe optimizer=adamw "
                               "--set-recipe lr=0.001 --set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                               "--set fusion_block=residual --set patch_dropout=0.5 --rows ADPF --attention "
                               "--seeds 0 1 2 --record benchmarks/results/patch-dropout-synthetic.json",
    "box-jitter-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                            "--epochs 10,20 --set-recipe fusion_boxes=once --set-recipe optimizer=adamw "
                            "--set-recipe lr=0.001 --set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                            "--set fusion_block=residual --set-recipe box_jitter=0.25 --rows ADPF --attention "
                            "--seeds 0 1 2 --record benchmarks/results/box-jitter-synthetic.json",
    # Table VII's ADPF at the book's setting with stage 2 twice as long (10 + 40), as the paper
    # trains it and with its patches dropped (open choice 22): whether the dropout, which ties at
    # 20 epochs, needs the longer stage, and whether the paper's ADPF only overfits more with it
    "main-stream-long-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                                  "--epochs 10,40 --set-recipe fusion_boxes=once --set-recipe optimizer=adamw "
                                  "--set-recipe lr=0.001 --set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                                  "--set fusion_block=residual --rows ADPF --attention --seeds 0 1 2 "
                                  "--record benchmarks/results/main-stream-long-synthetic.json",
    "patch-dropout-long-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                                    "--epochs 10,40 --set-recipe fusion_boxes=once --set-recipe optimizer=adamw "
                                    "--set-recipe lr=0.001 --set-recipe weight_decay=0.05 --set fusion_stem_stride=1 "
                                    "--set fusion_block=residual --set patch_dropout=0.5 --rows ADPF --attention "
                                    "--seeds 0 1 2 --record benchmarks/results/patch-dropout-long-synthetic.json",
    # AttentionNet alone of adamw-synthetic without the diversity loss (Eq. 14's weight 0):
    # what the loss does to the heads' overlap and to where they attend, with a stage 1 that learns
    "no-diversity-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 --recipe book "
                              "--set-recipe optimizer=adamw --set-recipe lr=0.001 --set-recipe weight_decay=0.05 "
                              "--set diversity_weight=0 --rows 'AttentionNet alone' --attention --seeds 0 1 2 "
                              "--record benchmarks/results/no-diversity-synthetic.json",
    # The same with Eq. 14's weight ten, thirty and a hundred times the paper's: how far the pull
    # that keeps the heads apart also sends them to the age regions, and where it sends them away
    **{f"diversity-{weight}-synthetic": "adpf experiments ablation --data synthetic --synthetic-n 3000 "
       "--recipe book --set-recipe optimizer=adamw --set-recipe lr=0.001 --set-recipe weight_decay=0.05 "
       f"--set diversity_weight={weight} --rows 'AttentionNet alone' --attention --seeds 0 1 2 "
       f"--record benchmarks/results/diversity-{weight}-synthetic.json"
       for weight in ("0.1", "0.3", "1")},
    # The same main stream on UTKFace, on the adamw-utkface command (AdamW, 15 + 40, boxes found
    # once): whether the paper's ADPF, beside a plain CNN that learns, reaches the real faces'
    # target and adds to its AttentionNet
    "main-stream-utkface": "adpf experiments ablation --data data/utkface-64 --recipe cpu --epochs 15,40 "
                           "--set-recipe fusion_boxes=once --set-recipe optimizer=adamw --set-recipe lr=0.001 "
                           "--set-recipe weight_decay=0.05 --set fusion_stem_stride=1 --set fusion_block=residual "
                           "--rows 'ADPF,ADPF (placed boxes),AttentionNet alone,plain CNN' --seeds 0 1 2 "
                           "--test-on data/aaf-64 --attention --record benchmarks/results/main-stream-utkface.json",
    # main-stream-utkface's paper's ADPF with each face's patch features dropped at each stage with
    # probability 0.5 in training (open choice 22, not the paper's): whether the regulariser that
    # did not help on the drawn faces helps on real ones, where there are more faces to learn by heart
    "patch-dropout-utkface": "adpf experiments ablation --data data/utkface-64 --recipe cpu --epochs 15,40 "
                             "--set-recipe fusion_boxes=once --set-recipe optimizer=adamw --set-recipe lr=0.001 "
                             "--set-recipe weight_decay=0.05 --set fusion_stem_stride=1 --set fusion_block=residual "
                             "--set patch_dropout=0.5 --rows ADPF --seeds 0 1 2 --test-on data/aaf-64 --attention "
                             "--record benchmarks/results/patch-dropout-utkface.json",
}

RECORD_FORMAT = 1


# --- one row ----------------------------------------------------------------------------------

def result_row(result: TrainResult) -> dict:
    """The columns every table shares: test and validation MAE, CS(5), parameters, training
    seconds and images/s."""
    config = ADPFConfig.from_dict(result.config)
    test = result.metrics["test"]
    return {"variant": config.variant, "heads": config.heads, "mae": test["mae"],
            "val_mae": result.metrics["val"]["mae"] if "val" in result.metrics else float("nan"),
            "cs5": test["cs"][5] if len(test["cs"]) > 5 else float("nan"),
            "parameters": count_parameters(build_model(config)),
            "train_seconds": sum(result.timings.values()),
            "within_1std": test["calibration"]["within_1std"], "within_2std": test["calibration"]["within_2std"],
            "mean_std": test["mean_std"], "std_scale": result.std_scale,
            "best_epochs": result.best_epochs,
            **{f"images_per_s_{k}": v for k, v in result.throughput.items()},
            "cached": result.cached}


def attention_columns(result: TrainResult, data: Prepared, indices, batch_size: int = 64) -> dict:
    """Head overlap, the heads' entropy, for ADPF its boxes (and, with ``patch_placement=
    "rank_median"``, the placed boxes), and, with region masks, the share of attention on the
    true age regions."""
    config = ADPFConfig.from_dict(result.config)
    if config.variant not in ("adpf", "attention_only"):
        return {}
    loader = DataLoader(PreparedFaces(data, indices), batch_size=batch_size)
    model = load_model(result.checkpoint)
    report = attention_report(model, loader)
    row = {"head_overlap": report["head_overlap"], "head_entropy": report["head_entropy"]}
    if config.variant == "adpf":
        row.update({k: v for k, v in report.items() if k.startswith("box_") and k != "box_region_share"})
        if config.patch_placement == "rank_median":
            row["placed_boxes"] = model.placed_boxes.tolist()  # (n, 4) x0, y0, x1, y1, P_1 first
        if "box_region_share" in report:
            share = report["box_region_share"]
            row.update(box_region_share=sum(share) / len(share), box_region_share_p1=share[0])
    if "region_share" in report:
        share = report["region_share"]
        row.update(region_share=sum(share) / len(share), region_share_p1=share[0],
                   region_area=report["region_area"])
    return row


def test_on_columns(result: TrainResult, other: Prepared, batch_size: int = 64) -> dict:
    """MAE and CS(5) of the trained model on every face of another dataset."""
    loader = DataLoader(PreparedFaces(other), batch_size=batch_size)
    metrics = summarize(predict(load_model(result.checkpoint), loader))
    return {"test_on_mae": metrics["mae"], "test_on_cs5": metrics["cs"][5]}


def learning_history(result: TrainResult) -> dict[str, list[dict]]:
    """Per stage, per epoch: epoch, train_mae, val_mae, seconds (the learning curves)."""
    return {stage: [{k: row.get(k) for k in ("epoch", "train_mae", "val_mae", "seconds")} for row in rows]
            for stage, rows in result.history.items()}


# --- tables -----------------------------------------------------------------------------------

def ablation_configs(base: ADPFConfig, rows: Sequence[str] = DEFAULT_ROWS) -> dict[str, ADPFConfig]:
    """The configs of the named ablation rows (``ABLATIONS``)."""
    unknown = [name for name in rows if name not in ABLATIONS]
    if unknown:
        raise KeyError(f"unknown ablation {unknown[0]!r}; choose from {list(ABLATIONS)}")
    return {name: base.replace(**ABLATIONS[name]) for name in rows}


def heads_configs(heads: Iterable[int] = (1, 2, 3, 4, 5, 6, 7, 8), preset: str = "cpu",
                  **changes) -> dict[str, ADPFConfig]:
    """Table IX's configs: full ADPF with n heads (``get_preset(preset, heads=n, **changes)``
    keeps c_head and gives FusionNet one stage per head)."""
    return {f"ADPF, {n} heads": get_preset(preset, heads=n, **changes) for n in heads}


def measure(configs: dict[str, ADPFConfig], data, split, recipe: Recipe | str = "cpu", *,
            seeds: Sequence[int] | None = None, attention: bool = False, test_on=None,
            record: str | Path | None = None, kind: str = "ablation", command: str = "",
            progress: bool = True) -> pd.DataFrame:
    """Train every config (for every seed) on ``split`` and test it; one row per (model, seed).

    Args:
        configs: model name → config (`ablation_configs`, `heads_configs`).
        seeds: training seeds (``recipe.seed`` of each row); None: the recipe's own seed.
        attention: add head overlap and region shares (`attention_columns`) on the test set.
        test_on: a second prepared dataset (folder or `Prepared`) every model is also tested
            on, whole (train on one set, test on another).
        record: a JSON file to write the rows into after each row, and to resume from
            (module docstring); ``kind`` and ``command`` go into it.
    Returns:
        the rows (the ``history`` column holds the learning curves).
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    data = data if isinstance(data, Prepared) else load_prepared(data)
    other = None if test_on is None else test_on if isinstance(test_on, Prepared) else load_prepared(test_on)
    seeds = [recipe.seed] if seeds is None else list(seeds)
    indices = as_split(split, len(data))
    state = None
    if record is not None:
        state = _open_record(Path(record), kind, command, data, getattr(split, "name", ""), indices, recipe,
                             configs, seeds, attention, other)
    done = {(row["model"], row["seed"]): row for row in (state["rows"] if state else [])}
    rows = []
    # seed after seed, so that a record stopped early holds whole tables for its first seeds
    for seed in seeds:
        for name, config in configs.items():
            if (name, seed) in done and done[(name, seed)]["config_digest"] == digest(config.to_dict()):
                rows.append(done[(name, seed)])
                continue
            result = train(config, data, indices, recipe.replace(seed=seed), progress=progress)
            row = {"model": name, "seed": seed, **result_row(result)}
            if attention:
                row.update(attention_columns(result, data, indices["test"]))
            if other is not None:
                row.update(test_on_columns(result, other))
            row.update(device=result.hardware["device"], history=learning_history(result),
                       stage_keys=result.stage_keys, config_digest=digest(config.to_dict()))
            rows.append(row)
            if state is not None:
                _write_rows(Path(record), state, row)
    return pd.DataFrame(rows)


def ablation_table(base: ADPFConfig, data, split, recipe: Recipe | str = "cpu",
                   rows: Sequence[str] = DEFAULT_ROWS, attention: bool = False,
                   progress: bool = True, **options) -> pd.DataFrame:
    """Table VII: one row per ablation (``ABLATIONS``) trained on ``split``, tested on its test set.

    With ``attention=True`` the attention variants also get ``head_overlap`` and, on data with
    region masks (the synthetic set), ``region_share`` (mean over heads), ``region_share_p1``
    (the most important head) and ``region_area`` (what a uniform map would score).
    ``options`` (seeds, test_on, record, command) go to `measure`.
    """
    return measure(ablation_configs(base, rows), data, split, recipe, attention=attention,
                   progress=progress, kind="ablation", **options)


def heads_table(data, split, recipe: Recipe | str = "cpu", heads: Iterable[int] = (1, 2, 3, 4, 5, 6, 7, 8),
                preset: str = "cpu", progress: bool = True, *, attention: bool = False,
                seeds: Sequence[int] | None = None, record: str | Path | None = None, command: str = "",
                **changes) -> pd.DataFrame:
    """Table IX: full ADPF with n heads (`heads_configs`; ``changes`` are config fields);
    ``attention``, ``seeds``, ``record`` and ``command`` as for `measure`."""
    return measure(heads_configs(heads, preset, **changes), data, split, recipe, seeds=seeds,
                   attention=attention, record=record, kind="heads", command=command, progress=progress)


def split_row(config: ADPFConfig, data: Prepared, split, recipe: Recipe | str, name: str, *,
              use_cache: bool = True, progress: bool = True) -> dict:
    """Train on one split of a protocol and test: ``name``, the split's train and test sizes and
    `result_row`. Every protocol run makes its rows here (`run_protocol`, ``folds.run_folds``)."""
    result = train(config, data, split, recipe, use_cache=use_cache, progress=progress)
    indices = as_split(split, len(data))
    return {"split": name, "train": len(indices["train"]), "test": len(indices["test"]), **result_row(result)}


def run_protocol(config: ADPFConfig, data, splits: Sequence, recipe: Recipe | str = "cpu",
                 progress: bool = True) -> pd.DataFrame:
    """Train and test on every split of a protocol (``adpf.data.protocols``): one row per split
    (`split_row`), nothing recorded; ``adpf protocol`` (``folds.run_folds``) records each and resumes."""
    data = data if isinstance(data, Prepared) else load_prepared(data)
    return pd.DataFrame([split_row(config, data, split, recipe, getattr(split, "name", str(i)), progress=progress)
                         for i, split in enumerate(splits)])


def mean_std(table: pd.DataFrame, columns: Sequence[str] = ("mae", "cs5")) -> pd.DataFrame:
    """Mean and (sample) standard deviation of some columns over a protocol's splits."""
    return table[list(columns)].agg(["mean", "std"])


# --- records ----------------------------------------------------------------------------------

def _identity(data: Prepared, indices: dict, recipe: Recipe, attention: bool, other: Prepared | None) -> dict:
    """What a record's rows depend on besides the model and the seed."""
    learned = {k: v for k, v in recipe.to_dict().items() if k not in (*SPEED_FIELDS, "seed")}
    return {"code_version": code_version(), "data": data_identity(data)["content"],
            "split": split_identity(indices)["hash"], "recipe": learned, "attention": attention,
            "test_on": None if other is None else data_identity(other)["content"]}


def _describe_data(data: Prepared) -> dict:
    info = data.info
    return {"name": info.get("name"), "count": len(data), "image_size": data.image_size,
            "subjects": info.get("subjects"), "content": data_identity(data)["content"]}


def _constant(data: Prepared, indices: dict, other: Prepared | None) -> dict:
    """Always answering the mean training age: its MAE on the test and validation faces (and
    on the second dataset)."""
    ages = data.meta["age"].to_numpy(np.float64)
    train_ages = ages[indices["train"]]
    out = {"train_mean_age": float(train_ages.mean()), "mae": mae(constant_baseline(train_ages, ages[indices["test"]]))}
    if indices["val"].size:
        out["val_mae"] = mae(constant_baseline(train_ages, ages[indices["val"]]))
    if other is not None:
        out["test_on_mae"] = mae(constant_baseline(train_ages, other.meta["age"].to_numpy(np.float64)))
    return out


def _open_record(path: Path, kind: str, command: str, data: Prepared, split_name: str, indices: dict,
                 recipe: Recipe, configs: dict, seeds: list[int], attention: bool, other: Prepared | None) -> dict:
    """The record to write into: the one in ``path`` when it was made the same way (its rows
    are kept), else a fresh one."""
    identity = _identity(data, indices, recipe, attention, other)
    old = read_json(path)
    keep = old is not None and old.get("kind") == kind and old.get("identity") == identity
    if old is not None and not keep:
        print(f"{path}: made by other code or on another setting; starting it afresh", file=sys.stderr)
    state = {
        "format": RECORD_FORMAT, "kind": kind, "command": command,
        "date": _now(), "code_version": identity["code_version"], "versions": versions(),
        "hardware": hardware(), "data": _describe_data(data),
        "split": {"name": split_name, **split_identity(indices)},
        "recipe": {**recipe.to_dict(), "seed": "per row"},
        "config": next(iter(configs.values())).to_dict(), "attention": attention,
        "models": list(configs) + [m for m in (old["models"] if keep else []) if m not in configs],
        "seeds": sorted(set(seeds) | set(old["seeds"] if keep else [])),
        "constant": _constant(data, indices, other),
        "test_on": None if other is None else _describe_data(other),
        "identity": identity, "rows": old["rows"] if keep else [],
    }
    write_json(path, state)
    return state


def _write_rows(path: Path, state: dict, row: dict) -> None:
    state["rows"] = [r for r in state["rows"] if (r["model"], r["seed"]) != (row["model"], row["seed"])]
    state["rows"].append({k: v for k, v in row.items() if k != "cached"})
    state["date"] = _now()
    write_json(path, state)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def read_record(path: str | Path, kind: str | None = None) -> dict:
    """A record written by `measure` (``adpf experiments ... --record``); raises
    FileNotFoundError or ValueError (naming the file) when it is missing or not a record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such record")
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or "rows" not in record:
        raise ValueError(f"{path}: not an experiments record (format {RECORD_FORMAT})")
    if kind is not None and record["kind"] != kind:
        raise ValueError(f"{path}: a {record['kind']!r} record, expected {kind!r}")
    return record


def merge_records(records: Sequence[dict], command: str) -> dict:
    """One record from records of the same kind and identity (made apart, e.g. one process per
    seed): every row, the union of models and seeds, the latest date; ``command`` is the one
    command that makes the whole record. Raises ValueError when they were made differently."""
    if not records:
        raise ValueError("merge_records: no records")
    first = records[0]
    for other in records[1:]:
        if (other["kind"], other["identity"]) != (first["kind"], first["identity"]):
            raise ValueError("merge_records: the records were made by other code, data, split or recipe")
    merged = {**first, "command": command, "date": max(r["date"] for r in records),
              "models": list(dict.fromkeys(m for r in records for m in r["models"])),
              "seeds": sorted({s for r in records for s in r["seeds"]}), "rows": []}
    seen = set()
    for record in records:
        for row in record["rows"]:
            if (row["model"], row["seed"]) not in seen:
                seen.add((row["model"], row["seed"]))
                merged["rows"].append(row)
    return merged


def record_rows(record: dict) -> pd.DataFrame:
    """The rows of a record, in the order of its models, then seeds."""
    rows = pd.DataFrame(record["rows"])
    order = {name: i for i, name in enumerate(record["models"])}
    return rows.sort_values(["model", "seed"], key=lambda c: c.map(order) if c.name == "model" else c,
                            ignore_index=True)


def is_current(record: dict) -> bool:
    """Was the record made by the code that would train its models now?"""
    return record["code_version"] == code_version()


def learning_curves(record: dict) -> pd.DataFrame:
    """One row per (model, seed, stage, epoch) of a record: train_mae, val_mae."""
    rows = [{"model": row["model"], "seed": row["seed"], "stage": stage, **epoch}
            for row in record["rows"] for stage, epochs in row["history"].items() for epoch in epochs]
    return pd.DataFrame(rows)


def stage_ends(curves: pd.DataFrame, last_stage: bool = False) -> pd.DataFrame:
    """The last epoch of every (model, seed, stage) of `learning_curves` rows (train_mae, val_mae,
    ...), stages in the order they trained; ``last_stage=True`` keeps only each (model, seed)'s
    last stage: the epoch its model ended on."""
    ends = curves.groupby(["model", "seed", "stage"], sort=False).tail(1)
    return ends.groupby(["model", "seed"], sort=False).tail(1) if last_stage else ends


def late_gain(curves: pd.DataFrame, epochs: int = 1) -> pd.DataFrame:
    """How much validation MAE each model's last stage still gained in its last ``epochs``
    epochs: one row per (model, seed), column ``gain`` (years; > 0 is still improving; NaN when
    the stage has no more than ``epochs`` epochs), from `learning_curves` rows."""
    last_stage = curves.groupby(["model", "seed"])["stage"].transform(lambda s: s.iloc[-1])
    part = curves[curves["stage"] == last_stage].sort_values("epoch")
    tail = part.groupby(["model", "seed"], sort=False)["val_mae"].apply(
        lambda v: float(v.iloc[-epochs - 1] - v.iloc[-1]) if len(v) > epochs else float("nan"))
    return tail.rename("gain").reset_index()


def run_command(command: str, root: str | Path = RESULTS.parents[1]) -> int:
    """Run an ``adpf experiments`` command line (a record's ``command``, or one of
    `BOOK_RECORDS`) from the repository's root (``root``); return its exit status. A record's
    finished rows of the same code are kept, the rest are trained."""
    argv = shlex.split(command)
    if argv[:2] != ["adpf", "experiments"]:
        raise ValueError(f"not an adpf experiments command: {command!r}")
    return subprocess.call([sys.executable, "-m", "adpf.cli", *argv[1:]], cwd=root)


def book_records(folder: str | Path = RESULTS, rerun: bool = False,
                 required: Sequence[str] = ("ablation-synthetic", "heads-synthetic")) -> dict[str, dict]:
    """The records of `BOOK_RECORDS` found in ``folder`` (``<name>.json``), by name.

    With ``rerun`` each is first made again by its own command (a missing one by the book's
    command for it). A missing ``required`` record is a FileNotFoundError that gives the
    command to make it.
    """
    folder, found = Path(folder), {}
    for name, command in BOOK_RECORDS.items():
        path = folder / f"{name}.json"
        if rerun:
            run_command(read_record(path)["command"] if path.exists() else command)
        if path.exists():
            found[name] = read_record(path)
        elif name in required:
            raise FileNotFoundError(f"{path}: missing; make it from the repository's root with: {command}")
    return found


def records_overview(records: dict[str, dict]) -> pd.DataFrame:
    """One line per record: when, on what, how long, how many seeds and rows, and whether the
    code that made it is the current one."""
    return pd.DataFrame([{
        "record": f"{name}.json", "made": r["date"][:10],
        "data": f"{r['data']['name']}, {r['data']['count']:,} faces of {r['data']['image_size']} px",
        "train / val / test": " / ".join(f"{r['split']['sizes'][k]:,}" for k in ("train", "val", "test")),
        "epochs": f"{r['recipe']['attention_epochs']} + {r['recipe']['fusion_epochs']}",
        "seeds": len(r["seeds"]), "rows": len(r["rows"]),
        "code": "current" if is_current(r) else "changed since"} for name, r in records.items()])


def record_notes(records: dict[str, dict], folder: str | Path = RESULTS) -> str:
    """MyST admonitions for a page: a warning for every record made by other code than the
    current one, a note with the command for every book record that is missing."""
    notes = [f"```{{warning}}\n`{name}.json` was made by code version `{r['code_version']}`; the model "
             f"or training code has changed since (now `{code_version()}`), so its numbers are those of "
             f"the older code. Make it again with `{r['command']}`.\n```\n"
             for name, r in records.items() if not is_current(r)]
    notes += [f"```{{note}}\n`{name}.json` is not in `{Path(folder).name}/`: its part of the page is left "
              f"out. Make it from the repository's root with `{command}`.\n```\n"
              for name, command in BOOK_RECORDS.items() if name not in records]
    return "".join(notes)


# --- statistics over seeds --------------------------------------------------------------------

def seed_summary(rows: pd.DataFrame, columns: Sequence[str] = ("mae", "cs5"), by: str = "model") -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of ``columns``, one row per ``by`` (in the
    order of first appearance): columns ``<column>_mean``, ``<column>_std`` and ``seeds``."""
    groups = rows.groupby(by, sort=False)
    out = pd.DataFrame({"seeds": groups.size()})
    for column in columns:
        out[f"{column}_mean"] = groups[column].mean()
        out[f"{column}_std"] = groups[column].std(ddof=1)
    return out.reset_index()


def seed_table(rows: pd.DataFrame, columns: dict[str, str], by: str = "model",
               digits: dict[str, int] | None = None) -> pd.DataFrame:
    """A table for a page: one line per ``by`` (in order of appearance), one column per
    ``label: column`` of ``columns``, each cell "mean ± std" over the seeds (`mean_pm_std`,
    ``digits[column]`` decimals, default 2; "—" where the column is missing or empty)."""
    digits = digits or {}
    out = {by: list(dict.fromkeys(rows[by]))}
    for label, column in columns.items():
        cells = []
        for key in out[by]:
            values = rows.loc[rows[by] == key, column].dropna() if column in rows else []
            cells.append(mean_pm_std(values, digits.get(column, 2)) if len(values) else "—")
        out[label] = cells
    return pd.DataFrame(out)


def verdict(better: Sequence[float], worse: Sequence[float], higher_is_better: bool = False) -> str:
    """Did ``better`` beat ``worse`` (values over seeds)? A difference of the means within the
    seeds' spread is a tie.

    Returns "held" when the means differ the expected way by more than the sum of the two
    sample standard deviations (the intervals mean ± std do not overlap), "did not hold" when
    they differ the other way by more than that, else "tie". Needs two values on each side:
    one seed has no spread.
    """
    a, b = np.asarray(better, dtype=np.float64), np.asarray(worse, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"verdict needs at least 2 seeds on each side, got {a.size} and {b.size}")
    gain = (a.mean() - b.mean()) * (1 if higher_is_better else -1)
    spread = a.std(ddof=1) + b.std(ddof=1)
    if gain > spread:
        return "held"
    if -gain > spread:
        return "did not hold"
    return "tie"


def mean_pm_std(values: Sequence[float], digits: int = 2) -> str:
    """``"8.12 ± 0.30"`` (sample std over seeds; one value alone has no ± part)."""
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


class Claim(NamedTuple):
    """A claim: ``better`` beats ``worse`` on ``column`` (of the ablation or the heads table).

    "worst of Table VII", "best of 5, 6 heads" and "best of the other heads" are chosen from
    the measured means.
    """

    claim: str
    where: str
    better: str
    worse: str
    column: str
    higher_is_better: bool = False
    table: str = "ablation"


#: The paper's claims about its ablations and heads, as reported by the paper (MORPH II,
#: Setting I), and the project's own questions.
_PAPER = "as reported by the paper"
CLAIMS = [Claim(*c) for c in [
    ("hybrid attention beats self-attention summed over channels", f"{_PAPER} (Table VII)",
     "ADPF", "ADPF w/SA", "mae"),
    ("ranking the patches helps", f"{_PAPER} (Table VII)", "ADPF", "ADPF w/o ranking", "mae"),
    ("the diversity loss helps", f"{_PAPER} (Table VII)", "ADPF", "ADPF w/o diversity loss", "mae"),
    ("FusionNet adds to AttentionNet alone", f"{_PAPER} (Table VII)", "ADPF", "AttentionNet alone", "mae"),
    ("AttentionNet alone drops the most of the Table VII variants", f"{_PAPER} (Table VII)",
     "worst of Table VII", "AttentionNet alone", "mae"),
    ("the diversity loss keeps the heads' maps apart", f"{_PAPER} (Fig. 10)",
     "ADPF", "ADPF w/o diversity loss", "head_overlap"),
    ("self-attention strays to unimportant regions", f"{_PAPER} (Fig. 9)",
     "ADPF", "ADPF w/SA", "region_lift", True),
    ("dynamic patches beat the fixed ones of the authors' prior work", f"{_PAPER} (Table VIII)",
     "ADPF", "fixed patches", "mae"),
    ("5 or 6 heads are best", f"{_PAPER} (Table IX)", "best of 5, 6 heads", "best of the other heads", "mae",
     False, "heads"),
    ("attention and patches help: ADPF beats the same main stream without them", "this project's baseline",
     "ADPF", "plain CNN", "mae"),
    ("with the diversity loss more attention lands on the true age regions", "this project's question",
     "ADPF", "ADPF w/o diversity loss", "region_lift", True),
    ("ADPF beats a ResNet-18 of its size", "this project's reference", "ADPF", "ResNet-18 (reference)", "mae"),
]]

_UNITS = {"mae": "MAE (years)", "head_overlap": "head overlap", "region_lift": "attention on the regions ÷ chance"}


def check_claims(ablation: pd.DataFrame, heads: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim of `CLAIMS` beside what the rows (of `record_rows`) measured.

    Columns: claim, where, measured (mean ± std over seeds of both sides), verdict ("held",
    "did not hold", "tie" from `verdict`; "one seed" where a side has a single seed so far,
    so no spread to judge by; "not measured" where a model or column is missing).
    ``region_lift`` is region_share / region_area (1: chance).
    """
    rows = ablation.copy()
    if {"region_share", "region_area"} <= set(rows.columns):
        rows["region_lift"] = rows["region_share"] / rows["region_area"]
    tables = {"ablation": rows, "heads": heads}
    out = []
    for c in CLAIMS:
        table = tables[c.table]
        named = _resolve(table, c.better, c.worse, c.column) if table is not None else None
        if named is None:
            out.append({"claim": c.claim, "where": c.where, "measured": "—", "verdict": "not measured"})
            continue
        (b_name, b), (w_name, w) = named
        out.append({"claim": c.claim, "where": c.where,
                    "measured": f"{_UNITS[c.column]}: {b_name} {mean_pm_std(b)} vs {w_name} {mean_pm_std(w)}",
                    "verdict": verdict(b, w, c.higher_is_better) if min(b.size, w.size) >= 2 else "one seed"})
    return pd.DataFrame(out)


def _resolve(table: pd.DataFrame, better: str, worse: str, column: str):
    """The two (name, values over seeds) a claim compares, or None when not measured."""
    if column not in table.columns:
        return None
    values = {name: group[column].dropna().to_numpy() for name, group in table.groupby("model", sort=False)}
    values = {name: v for name, v in values.items() if v.size}
    means = {name: v.mean() for name, v in values.items()}

    def pick(name: str) -> str | None:
        if name == "worst of Table VII":
            pool = [n for n in ("ADPF w/SA", "ADPF w/o ranking", "ADPF w/o diversity loss") if n in means]
            return max(pool, key=means.get) if pool else None
        if name == "best of 5, 6 heads":
            pool = [n for n in ("ADPF, 5 heads", "ADPF, 6 heads") if n in means]
            return min(pool, key=means.get) if pool else None
        if name == "best of the other heads":
            pool = [n for n in means if n not in ("ADPF, 5 heads", "ADPF, 6 heads")]
            return min(pool, key=means.get) if pool else None
        return name if name in values else None

    b, w = pick(better), pick(worse)
    if b is None or w is None:
        return None
    return (b, values[b]), (w, values[w])
