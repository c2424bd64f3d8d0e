"""Cache keys: what a stage depends on changes its key, what it does not leaves it; ADPF's stage 1 is shared."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import adpf
from adpf.cache import (FUSION_ONLY_FIELDS, STALE_AFTER, attention_config, code_version, data_identity, digest,
                        read_json, split_identity, stage_dir, sweep_temporaries, write_json)
from adpf.config import ADPFConfig, get_preset
from adpf.data.prepared import load_prepared, write_prepared
from adpf.recipes import Recipe
from adpf.train import plan_stages

TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)
IDENTITY = {"data": {"info": {"name": "x"}, "content": "abc"}, "split": {"hash": "s1"}}
RECIPE = Recipe(attention_epochs=3, fusion_epochs=2, device="cpu")


def tiny(**changes):
    return get_preset("cpu", **{**TINY, **changes})


def keys(config, identity=IDENTITY, recipe=RECIPE):
    return {s.name: s.key for s in plan_stages(config, identity, recipe)}


def test_attention_config_drops_only_fusion_fields():
    base = attention_config(tiny())
    assert base.variant == "attention_only"
    for change in [dict(ranking=False), dict(rank_by="abs"), dict(patch_size=6), dict(patch_threshold=0.5),
                   dict(fusion_channels=(8, 8, 8)), dict(patch_min_frac=0.3), dict(variant="attention_only")]:
        assert attention_config(tiny(**change)) == base, change
    for change in [dict(attention="self_sum"), dict(diversity_weight=0.0), dict(sigma=3.0), dict(key_channels=8)]:
        assert attention_config(tiny(**change)) != base, change
    # every field the AttentionNet reads is kept; the dropped ones are exactly the fusion-only fields
    kept = {f for f in ADPFConfig.__dataclass_fields__ if f not in FUSION_ONLY_FIELDS + ("variant",)}
    assert all(getattr(attention_config(tiny()), f) == getattr(tiny(), f) for f in kept)


def test_adpf_attention_alone_and_w_o_ranking_share_stage_one():
    adpf_keys = keys(tiny())
    assert list(adpf_keys) == ["attention", "fusion"]
    assert keys(tiny(variant="attention_only")) == {"attention": adpf_keys["attention"]}
    no_rank = keys(tiny(ranking=False))
    assert no_rank["attention"] == adpf_keys["attention"] and no_rank["fusion"] != adpf_keys["fusion"]
    for change in [dict(diversity_weight=0.0), dict(attention="self_sum")]:
        other = keys(tiny(**change))
        assert other["attention"] != adpf_keys["attention"] and other["fusion"] != adpf_keys["fusion"]
    assert list(keys(tiny(variant="plain_cnn"))) == ["single"]
    assert keys(tiny(variant="plain_cnn")) != keys(tiny(variant="fixed_patches"))


def test_recipe_fields_change_the_keys_they_shape():
    base = keys(tiny())
    longer_fusion = keys(tiny(), recipe=RECIPE.replace(fusion_epochs=5))
    assert longer_fusion["attention"] == base["attention"] and longer_fusion["fusion"] != base["fusion"]
    longer_attention = keys(tiny(), recipe=RECIPE.replace(attention_epochs=5))
    assert longer_attention["attention"] != base["attention"] and longer_attention["fusion"] != base["fusion"]
    for change in [dict(lr=0.2), dict(seed=1), dict(num_workers=2), dict(pad=1), dict(batch_size=7),
                   dict(optimizer="adamw"), dict(clip_grad_norm=1.0)]:
        assert keys(tiny(), recipe=RECIPE.replace(**change))["attention"] != base["attention"], change
    for change in [dict(channels_last=False), dict(compile=True), dict(deterministic=True), dict(amp=False)]:
        assert keys(tiny(), recipe=RECIPE.replace(**change)) == base, change  # amp: no effect on CPU
    # qk_init starts stage 1 only: stage 2 follows through its stage-1 key, the one-stage baselines share
    unit = RECIPE.replace(qk_init="unit_logits")
    assert keys(tiny(), recipe=unit)["attention"] != base["attention"]
    assert keys(tiny(), recipe=unit)["fusion"] != base["fusion"]
    for variant in ("plain_cnn", "fixed_patches", "resnet18"):
        assert keys(tiny(variant=variant), recipe=unit) == keys(tiny(variant=variant)), variant
    # box_jitter shapes stage 2 only (open choice 22): ADPF's stage 1 and the one-stage baselines share
    once = RECIPE.replace(fusion_boxes="once")
    jittered = keys(tiny(), recipe=once.replace(box_jitter=0.25))
    assert jittered["attention"] == base["attention"] and jittered["fusion"] != keys(tiny(), recipe=once)["fusion"]
    for variant in ("plain_cnn", "resnet18"):
        assert keys(tiny(variant=variant), recipe=once.replace(box_jitter=0.25)) == keys(tiny(variant=variant)), variant
    # patch_dropout is a FusionNet field: ADPF's stage 1 is shared, stage 2 is its own
    dropped = keys(tiny(patch_dropout=0.5))
    assert dropped["attention"] == base["attention"] and dropped["fusion"] != base["fusion"]


def test_data_and_split_change_every_key():
    base = keys(tiny())
    other_data = {**IDENTITY, "data": {"info": {"name": "x"}, "content": "abd"}}
    other_split = {**IDENTITY, "split": {"hash": "s2"}}
    for identity in (other_data, other_split):
        assert set(keys(tiny(), identity).values()).isdisjoint(base.values())


def write(root, images, ages):
    meta = pd.DataFrame({"age": ages, "subject": np.arange(len(ages))})
    return load_prepared(write_prepared(root, images, meta, name="t"))


def test_data_identity_is_the_content_not_the_place(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    a = data_identity(write(tmp_path / "a", images, [1.0, 2.0, 3.0, 4.0]))
    b = data_identity(write(tmp_path / "b", images.copy(), [1.0, 2.0, 3.0, 4.0]))
    assert a == b
    changed = images.copy()
    changed[2, 3, 4, 0] ^= 1
    assert data_identity(write(tmp_path / "c", changed, [1.0, 2.0, 3.0, 4.0]))["content"] != a["content"]
    assert data_identity(write(tmp_path / "d", images, [1.0, 2.0, 3.0, 5.0]))["content"] != a["content"]


def test_split_identity_and_digest():
    split = {"train": np.array([0, 1, 2]), "val": np.array([], dtype=np.int64), "test": np.array([3])}
    ident = split_identity(split)
    assert ident["sizes"] == {"train": 3, "val": 0, "test": 1}
    assert split_identity({**split, "test": np.array([4])})["hash"] != ident["hash"]
    assert digest({"a": 1, "b": (1, 2)}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_code_version_names_the_package_version():
    assert code_version().startswith(adpf.__version__ + "+") and code_version() == code_version()


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path))
    assert stage_dir("fusion", "k1") == tmp_path / "runs" / "fusion-k1"
    stage = plan_stages(tiny(), IDENTITY, RECIPE)[0]
    assert stage.folder == tmp_path / "runs" / f"attention-{stage.key}"


def test_json_records_are_written_atomically(tmp_path):
    path = tmp_path / "x" / "r.json"
    write_json(path, {"a": [1, 2], "b": 0.5})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 0.5}
    assert read_json(path) == {"a": [1, 2], "b": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "bad.json") is None


@pytest.mark.parametrize("field", FUSION_ONLY_FIELDS)
def test_fusion_only_fields_are_config_fields(field):
    assert field in ADPFConfig.__dataclass_fields__


def test_every_field_of_fusionnet_and_its_patches_is_fusion_only():
    # a FusionNet or patch field left out would give stage 1 a key of its own for each of its
    # values, and train the same AttentionNet again (fusion_block was, for one record)
    named = {f for f in ADPFConfig.__dataclass_fields__ if f.startswith(("fusion_", "patch_"))}
    assert named <= set(FUSION_ONLY_FIELDS)
    assert keys(tiny(fusion_block="residual"))["attention"] == keys(tiny())["attention"]


def test_code_version_follows_the_model_and_training_code_only(tmp_path):
    # a copy of the package: editing a shaping file changes the version, anything else keeps it
    import shutil

    import adpf
    from adpf import cache

    root = tmp_path / "adpf"
    shutil.copytree(Path(adpf.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert cache.source_version(Path(adpf.__file__).parent) == cache.code_version()
    before = cache.source_version(root)
    for name in ("cli.py", "evaluate.py", "plotting.py", "data/synthetic.py", "data/align.py", "setting.py"):
        (root / name).write_text((root / name).read_text() + "\n# edited\n")
        assert cache.source_version(root) == before, name
    for name in cache.SHAPING_FILES:
        text = (root / name).read_text()
        (root / name).write_text(text + "\n# a comment\n")
        assert cache.source_version(root) == before, name
        (root / name).write_text(text + "\nEDITED = 1\n")
        assert cache.source_version(root) != before, name
        (root / name).write_text(text)
    assert cache.source_version(root) == before


def test_the_code_version_ignores_documentation_but_not_code():
    from adpf.cache import code_tokens

    code = 'def f(x):\n    """Eq. 1."""\n    return x + 1  # add\n'
    assert code_tokens(code) == code_tokens('def f(x):\n    """Eq. 1, reworded."""\n\n    return x + 1\n')
    assert code_tokens(code) != code_tokens(code.replace("x + 1", "x + 2"))
    assert code_tokens(code) != code_tokens(code.replace("    return", "    y = 0\n    return"))
    # a string that is not a docstring is code
    assert code_tokens('x = "a"\n') != code_tokens('x = "b"\n')
    # indentation is structure
    assert code_tokens("if a:\n    b()\nc()\n") != code_tokens("if a:\n    b()\n    c()\n")


def test_every_module_the_training_imports_is_shaping_or_known_not_to_be():
    # a new module that the training loop imports must be classified, not silently left out
    import ast

    import adpf
    from adpf import cache

    root = Path(adpf.__file__).parent
    not_shaping = {"cache.py", "checkpoint.py", "evaluate.py", "data/synthetic.py", "data/aging.py", "data/render.py",
                   "__init__.py"}
    not_shaping.add("recipes.py")  # values only, each in every stage key (plan_stages) and record
    seen, todo = set(), ["train.py"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adpf"):
                parts = node.module.split(".")[1:]
                for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
                    if parts and (root / candidate).exists():
                        todo.append(candidate)
    assert seen - not_shaping <= set(cache.SHAPING_FILES), seen - not_shaping - set(cache.SHAPING_FILES)
def dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_sweep_removes_only_stale_temporaries_of_dead_writers(tmp_path):
    dead = dead_pid()
    runs = tmp_path / "runs" / "attention-k1"
    data = tmp_path / "data"
    runs.mkdir(parents=True), data.mkdir()
    files = {
        "dead and old": runs / f".checkpoint.pt.tmp-{dead}-abcd1234",
        "older version, old": runs / ".checkpoint.pt.k3j4h5g6.tmp",
        "alive and old": runs / f".checkpoint.pt.tmp-{os.getpid()}-efgh5678",
        "dead but fresh": runs / f".stage.json.tmp-{dead}-ijkl9012",
        "not a temporary": runs / "checkpoint.pt",
        "hidden, not a temporary": runs / ".notes",
        "in the cache root": tmp_path / f".x.json.tmp-{dead}-mnop3456",
    }
    for path in files.values():
        path.write_bytes(b"z" * 100)
    for name in ("dead and old", "older version, old", "alive and old", "not a temporary",
                 "hidden, not a temporary", "in the cache root"):
        age(files[name], 2 * STALE_AFTER)
    drawing = data / ".synthetic-s64-n10000-seed0-v2.tmp-ab12cd34"  # a dataset writer's folder
    (drawing / "sub").mkdir(parents=True)
    (drawing / "images.npy").write_bytes(b"i" * 1000)
    (drawing / "sub" / "x").write_bytes(b"j" * 24)
    writing = data / f".synthetic-s16-n60000-seed0-v2.tmp-{dead}-qrst7890"  # old folder, a file still written
    writing.mkdir()
    (writing / "images.npy").write_bytes(b"k" * 10)
    for path in (drawing / "images.npy", drawing / "sub", drawing, writing):
        age(path, 2 * STALE_AFTER)

    removed = dict(sweep_temporaries(tmp_path))
    assert removed == {files["dead and old"]: 100, files["older version, old"]: 100,
                       files["in the cache root"]: 100, drawing: 1024}
    assert all(not p.exists() for p in removed)
    for name in ("alive and old", "dead but fresh", "not a temporary", "hidden, not a temporary"):
        assert files[name].exists(), name
    assert writing.exists()
    assert sweep_temporaries(tmp_path) == []  # nothing left to sweep
    assert sweep_temporaries(tmp_path / "no cache yet") == []


def test_sweep_follows_the_cache_folder_and_the_age_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "runs" / "fusion-k2" / f".checkpoint.pt.tmp-{dead_pid()}-abcd1234"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    age(stale, 120)
    assert sweep_temporaries() == [] and stale.exists()  # younger than STALE_AFTER
    assert sweep_temporaries(stale_after=60) == [(stale, 0)] and not stale.exists()


def test_a_link_named_like_a_temporary_is_removed_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    (target / "keep").mkdir(parents=True)
    link = tmp_path / "data" / ".synthetic.tmp-ab12cd34"
    link.parent.mkdir()
    link.symlink_to(target, target_is_directory=True)
    age(link, 2 * STALE_AFTER)
    assert [p for p, _ in sweep_temporaries(tmp_path)] == [link]
    assert not link.is_symlink() and (target / "keep").is_dir()


def test_code_tokens_keep_each_f_string_as_its_source_text():
    # Python 3.12 splits f-strings into several tokens, earlier versions give one: the code
    # version must be the same on both (records made on a GPU machine's Python 3.12 are read here)
    from adpf.cache import _source_between, code_tokens
    source = 'x = f"a{b!r:>{w}} {f\'{c}\'}"\ny = f"""one\n{two}"""\n'
    tokens = code_tokens(source)
    assert 'f"a{b!r:>{w}} {f\'{c}\'}"' in tokens and 'f"""one\n{two}"""' in tokens
    assert tokens.count("<newline>") == 2
    lines = source.splitlines(keepends=True)
    assert _source_between(lines, (2, 4), (3, 8)) == 'f"""one\n{two}"""'
