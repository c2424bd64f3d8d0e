"""Carry recorded runs over a refactor that does not change what training computes.

Every record under ``benchmarks/results/`` carries the ``code_version`` it was made with (a hash
of the model and training code, ``adpf.cache.code_version``), and the book warns when the code
has changed since. A refactor that moves code between files or splits a function changes that
hash without changing a single trained weight. This script checks that claim instead of
trusting it, and only then writes the new version into the records:

1. the commit the records were made at is checked out into a temporary git worktree, and its
   code version must be the records' own;
2. for every model of every record (its config rebuilt from the record and checked against the
   row's ``config_digest``), a tiny training is run there and here, each in a fresh process with
   its own cache folder: the same config, 64 drawn faces, two epochs per stage, batch 16, the
   record's recipe otherwise, one CPU thread, deterministic;
3. the drawn faces and every trained weight (state dict, tensor by tensor) must be bitwise
   equal, and so must the test MAE.

Only then is ``code_version`` replaced (top level, ``identity`` and ``versions.code``) and a
``restamped`` entry added that names the old version, the commit and the check. Any difference
leaves every record untouched and exits 1::

    python benchmarks/restamp_records.py --made-at 54186f8            # all records made there
    python benchmarks/restamp_records.py --made-at 54186f8 benchmarks/results/heads-synthetic.json
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"faces": 64, "epochs": 2, "batch_size": 16}


# --- the child: runs inside one tree (old or new), prints digests as JSON ------------------------

def child(configs_file: str, recipe_file: str) -> None:
    """Train every config of ``configs_file`` tiny and print {digest: weights hash, ...}."""
    import numpy as np
    import torch

    import adpf
    from adpf.config import ADPFConfig
    from adpf.data.prepared import default_dataset, load_prepared
    from adpf.train import train
    try:
        from adpf.recipes import get_recipe
    except ImportError:  # the tree from before adpf.recipes existed
        from adpf.train import get_recipe

    torch.set_num_threads(1)
    configs = json.loads(Path(configs_file).read_text())
    recorded = json.loads(Path(recipe_file).read_text())
    data = load_prepared(default_dataset(image_size=configs[0]["config"]["image_size"], n=TINY["faces"],
                                         seed=0, progress=False))
    out = {"adpf": adpf.__file__, "data": hashlib.sha256(np.ascontiguousarray(data.images).tobytes()
                                                          + data.meta.to_csv().encode()).hexdigest()}
    n = len(data)
    split = {"train": np.arange(0, n - 24), "val": np.arange(n - 24, n - 12), "test": np.arange(n - 12, n)}
    fields = {k: v for k, v in recorded.items() if k not in ("seed",)}
    base = get_recipe("book")
    for item in configs:
        config = ADPFConfig(**item["config"])
        recipe = base.replace(**{**{k: v for k, v in fields.items() if hasattr(base, k)},
                                 "attention_epochs": TINY["epochs"], "fusion_epochs": TINY["epochs"],
                                 "batch_size": TINY["batch_size"], "device": "cpu", "num_workers": 0,
                                 "deterministic": True, "seed": 0})
        result = train(config, data, split, recipe, use_cache=False, progress=False)
        state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)["model"]
        h = hashlib.sha256()
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        out[item["digest"]] = {"weights": h.hexdigest(), "mae": result.mae}
    print(json.dumps(out))


# --- the parent -------------------------------------------------------------------------------

def record_configs(record: dict) -> list[dict]:
    """Every model's config of a record, rebuilt and checked against its rows' config_digest."""
    from adpf.cache import digest
    from adpf.config import ADPFConfig
    from adpf.experiments import ablation_configs, heads_configs

    base = ADPFConfig(**record["config"])
    if record["kind"] == "ablation":
        configs = ablation_configs(base, record["models"])
    else:
        heads = [int(name.split(", ")[1].split()[0]) for name in record["models"]]
        configs = heads_configs(heads, preset="cpu")
    wanted = {row["model"]: row["config_digest"] for row in record["rows"]}
    known, defaults = set(record["config"]), ADPFConfig().to_dict()
    out = []
    for name, config in configs.items():
        # a field added since the record was made must be at its default (what the record's code
        # did); the config is then digested, and both trees trained, with the record's own fields
        added = {k: v for k, v in config.to_dict().items() if k not in known}
        changed = sorted(k for k, v in added.items() if v != defaults[k])
        if changed:
            raise SystemExit(f"{record['_path']}: {name!r} sets {changed}, which the record does not know")
        as_recorded = {k: v for k, v in config.to_dict().items() if k in known}
        d = digest(as_recorded)
        if name in wanted and wanted[name] != d:
            raise SystemExit(f"{record['_path']}: cannot rebuild the config of {name!r} "
                             f"(digest {d}, the row says {wanted[name]})")
        out.append({"model": name, "digest": d, "config": as_recorded})
    return out


def run_child(tree: Path, configs: list[dict], recipe: dict, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "configs.json").write_text(json.dumps(configs))
    (work / "recipe.json").write_text(json.dumps(recipe))
    env = {**os.environ, "PYTHONPATH": str(tree), "ADPF_CACHE_DIR": str(work / "cache"),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           str(work / "configs.json"), str(work / "recipe.json")],
                          cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"tiny trainings in {tree} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out.pop("adpf").startswith(str(tree)):
        raise SystemExit(f"{tree}: the child imported adpf from elsewhere")
    return out


def tree_version(tree: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", "from adpf.cache import code_version; print(code_version())"],
                          cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--made-at", help="the commit the records were made at (required)")
    parser.add_argument("records", nargs="*", type=Path,
                        help="records to carry over (default: every benchmarks/results/*.json record)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if not args.made_at:
        parser.error("--made-at COMMIT is required")

    sys.path.insert(0, str(ROOT))
    from adpf.cache import code_version, write_json
    new = code_version()
    paths = args.records or sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    records = {}
    for path in paths:
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "code_version" in record and "rows" in record:
            record["_path"] = str(path)
            records[path] = record
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.made_at], capture_output=True,
                            text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="restamp-") as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_tree), commit],
                       check=True, capture_output=True)
        try:
            old = tree_version(old_tree)
            print(f"code at {commit[:10]}: {old}; here: {new}")
            todo = {}
            for path, record in records.items():
                if record["code_version"] == new:
                    print(f"{path.name}: current")
                elif record["code_version"] != old:
                    print(f"{path.name}: made with {record['code_version']}, not with {commit[:10]}: left as it is")
                else:
                    todo[path] = record
            if not todo:
                return 0
            configs, recipes = [], {}
            for record in todo.values():
                for item in record_configs(record):
                    if item["digest"] not in {c["digest"] for c in configs}:
                        configs.append(item)
                recipes[json.dumps(record["recipe"], sort_keys=True)] = record["recipe"]
            failures = []
            for i, recipe in enumerate(recipes.values()):
                print(f"recipe {i + 1}/{len(recipes)}: {len(configs)} tiny trainings in each tree ...", flush=True)
                before = run_child(old_tree, configs, recipe, Path(tmp) / f"old-{i}")
                after = run_child(ROOT, configs, recipe, Path(tmp) / f"new-{i}")
                if before["data"] != after["data"]:
                    failures.append("the drawn faces differ")
                for item in configs:
                    same = before[item["digest"]] == after[item["digest"]]
                    print(f"  {item['model']:<28} weights {'identical' if same else 'DIFFER'}  "
                          f"(test MAE {before[item['digest']]['mae']:.6f} → {after[item['digest']]['mae']:.6f})")
                    if not same:
                        failures.append(item["model"])
            if failures:
                print(f"not restamped: {', '.join(failures)}", file=sys.stderr)
                return 1
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)],
                           capture_output=True)
    today = datetime.date.today().isoformat()
    for path, record in todo.items():
        record.pop("_path")
        record.setdefault("restamped", []).append({
            "from": old, "to": new, "commit": commit, "date": today,
            "check": f"{len(configs)} configs: tiny trainings ({TINY['faces']} drawn faces, "
                     f"{TINY['epochs']}+{TINY['epochs']} epochs, batch {TINY['batch_size']}, CPU, deterministic) "
                     f"give bitwise-identical weights and data at {commit[:10]} and here"})
        record["code_version"] = new
        record["identity"]["code_version"] = new
        record["versions"]["code"] = new
        write_json(path, record)
        print(f"{path.name}: {old} → {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
