"""The paper's tables as tidy DataFrames: the ablation study (Table VII), the heads sweep
(Table IX), and protocol runs aggregated over folds (mean ± std).

Every row comes from ``train.train``, which loads what is already in the cache, so a table
that was built once is rebuilt for free, and rows that share a stage (ADPF, ADPF w/o ranking
and AttentionNet alone share stage 1) train it once.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
from torch.utils.data import DataLoader

from adpf.checkpoint import load_model
from adpf.config import ADPFConfig, get_preset
from adpf.data.prepared import Prepared, PreparedFaces, load_prepared
from adpf.evaluate import attention_report
from adpf.networks import build_model, count_parameters
from adpf.train import Recipe, TrainResult, get_recipe, train

#: The rows of Table VII (and the two baselines), as changes to the base config.
ABLATIONS: dict[str, dict] = {
    "ADPF": {},
    "ADPF w/SA": {"attention": "self_sum"},
    "ADPF w/o ranking": {"ranking": False},
    "ADPF w/o diversity loss": {"diversity_weight": 0.0},
    "AttentionNet alone": {"variant": "attention_only"},
    "plain CNN": {"variant": "plain_cnn"},
    "fixed patches": {"variant": "fixed_patches"},
}


def result_row(result: TrainResult) -> dict:
    """The columns every table shares: MAE, CS(5), parameters, training seconds and images/s."""
    config = ADPFConfig.from_dict(result.config)
    test = result.metrics["test"]
    return {"variant": config.variant, "heads": config.heads, "mae": test["mae"],
            "cs5": test["cs"][5] if len(test["cs"]) > 5 else float("nan"),
            "parameters": count_parameters(build_model(config)),
            "train_seconds": sum(result.timings.values()),
            **{f"images_per_s_{k}": v for k, v in result.throughput.items()},
            "cached": result.cached}


def attention_columns(result: TrainResult, data: Prepared, indices, batch_size: int = 64) -> dict:
    """Head overlap and, with region masks, the share of attention on the true age regions."""
    config = ADPFConfig.from_dict(result.config)
    if config.variant not in ("adpf", "attention_only"):
        return {}
    loader = DataLoader(PreparedFaces(data, indices), batch_size=batch_size)
    report = attention_report(load_model(result.checkpoint), loader)
    row = {"head_overlap": report["head_overlap"]}
    if "region_share" in report:
        share = report["region_share"]
        row.update(region_share=sum(share) / len(share), region_share_p1=share[0],
                   region_area=report["region_area"])
    return row


def ablation_table(base: ADPFConfig, data, split, recipe: Recipe | str = "cpu",
                   rows: Sequence[str] = tuple(ABLATIONS), attention: bool = False,
                   progress: bool = True) -> pd.DataFrame:
    """Table VII: one row per ablation (``ABLATIONS``) trained on ``split``, tested on its test set.

    With ``attention=True`` the attention variants also get ``head_overlap`` and, on data with
    region masks (the synthetic set), ``region_share`` (mean over heads), ``region_share_p1``
    (the most important head) and ``region_area`` (what a uniform map would score).
    """
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    data = data if isinstance(data, Prepared) else load_prepared(data)
    table = []
    for name in rows:
        if name not in ABLATIONS:
            raise KeyError(f"unknown ablation {name!r}; choose from {list(ABLATIONS)}")
        result = train(base.replace(**ABLATIONS[name]), data, split, recipe, progress=progress)
        row = {"model": name, **result_row(result)}
        if attention:
            row.update(attention_columns(result, data, _indices(split, "test")))
        table.append(row)
    return pd.DataFrame(table)


def heads_table(data, split, recipe: Recipe | str = "cpu", heads: Iterable[int] = (1, 2, 3, 4, 5, 6, 7, 8),
                preset: str = "cpu", progress: bool = True, **changes) -> pd.DataFrame:
    """Table IX: full ADPF with n heads (``get_preset(preset, heads=n, **changes)`` keeps c_head
    and gives FusionNet one stage per head)."""
    data = data if isinstance(data, Prepared) else load_prepared(data)
    table = []
    for n in heads:
        result = train(get_preset(preset, heads=n, **changes), data, split, recipe, progress=progress)
        table.append({"model": f"ADPF, {n} heads", **result_row(result)})
    return pd.DataFrame(table)


def run_protocol(config: ADPFConfig, data, splits: Sequence, recipe: Recipe | str = "cpu",
                 progress: bool = True) -> pd.DataFrame:
    """Train and test on every split of a protocol (``adpf.data.protocols``): one row per split."""
    data = data if isinstance(data, Prepared) else load_prepared(data)
    rows = []
    for i, split in enumerate(splits):
        result = train(config, data, split, recipe, progress=progress)
        rows.append({"split": getattr(split, "name", str(i)), "train": len(_indices(split, "train")),
                     "test": len(_indices(split, "test")), **result_row(result)})
    return pd.DataFrame(rows)


def mean_std(table: pd.DataFrame, columns: Sequence[str] = ("mae", "cs5")) -> pd.DataFrame:
    """Mean and (sample) standard deviation of some columns over a protocol's splits."""
    return table[list(columns)].agg(["mean", "std"])


def _indices(split, name: str):
    return split[name] if isinstance(split, dict) else getattr(split, name)
