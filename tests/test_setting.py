"""A chapter's setting from its parameters, the same as the command line builds, and the kept epochs."""
import shlex

import numpy as np
import pytest
import torch

from adpf.checkpoint import load_checkpoint
from adpf.cli import build_parser, config_from_args, data_from_args, recipe_from_args, split_from_args
from adpf.config import get_preset
from adpf.setting import PROFILES, book_setting
from adpf.recipes import get_recipe

N = 200


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("profile", ["cpu", "cpu-sgd"])
def test_the_profile_gives_preset_recipe_and_faces(cache, profile):
    chosen = PROFILES[profile]
    setting = book_setting(profile, n_faces=N)
    assert setting.config == get_preset(chosen.preset).replace(**chosen.config_changes)
    assert setting.recipe == get_recipe(chosen.recipe, device="auto", seed=0, **chosen.recipe_changes)
    assert setting.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(setting.data) == N and setting.data.image_size == setting.config.image_size
    parts = [setting.split.train, setting.split.val, setting.split.test]
    assert sum(map(len, parts)) == N and len(np.unique(np.concatenate(parts))) == N
    subjects = setting.data.meta["subject"].to_numpy()
    assert not set(subjects[setting.split.train]) & set(subjects[setting.split.test])
    assert len(setting.split.test) == pytest.approx(0.2 * N, abs=10)
    table = setting.describe()
    assert table.loc["epochs", "value"].startswith(f"{setting.recipe.attention_epochs} (stage 1)")
    assert table.loc["device", "value"] == setting.device
    assert table.loc["profile", "value"].startswith(f"{profile} (preset {chosen.preset}")
    assert all(name in table.loc["profile", "value"] for name in {**chosen.config_changes, **chosen.recipe_changes})
    with pytest.raises(KeyError, match="unknown profile 'book'"):
        book_setting("book")


def test_the_default_profile_trains_with_adamw_and_the_stronger_main_stream(cache):
    # the chapters' setting is the one whose curves level out (open choice 20), the first one SGD's
    setting, first = book_setting(n_faces=N), book_setting("cpu-sgd", n_faces=N)
    assert (setting.recipe.optimizer, setting.recipe.lr, setting.recipe.weight_decay) == ("adamw", 1e-3, 0.05)
    assert (setting.recipe.attention_epochs, setting.recipe.fusion_epochs) == (10, 20)
    assert setting.recipe.fusion_boxes == "once"
    assert (setting.config.fusion_stem_stride, setting.config.fusion_block) == (1, "residual")
    assert first.recipe == get_recipe("book", device="auto", seed=0) and first.config == get_preset("cpu")
    assert first.data.root == setting.data.root


def test_the_seed_seeds_the_training_alone(cache):
    a, b = book_setting(n_faces=N, seed=0), book_setting(n_faces=N, seed=3, epochs=2)
    assert a.data.root == b.data.root
    assert all(np.array_equal(getattr(a.split, k), getattr(b.split, k)) for k in ("train", "val", "test"))
    assert b.recipe == a.recipe.replace(seed=3, attention_epochs=2, fusion_epochs=2)


@pytest.mark.parametrize("profile,seed,epochs", [("cpu", 0, None), ("cpu", 2, 3), ("cpu-sgd", 0, None)])
def test_the_command_line_builds_the_same_setting(cache, profile, seed, epochs):
    setting = book_setting(profile, n_faces=N, seed=seed, epochs=epochs)
    argv = shlex.split(setting.command("plain_cnn"))
    assert argv[:2] == ["adpf", "train"]
    args = build_parser().parse_args(argv[1:])
    config = config_from_args(args)
    data = data_from_args(args, config.image_size)
    split = split_from_args(args, data)
    assert config == setting.config.replace(variant="plain_cnn")
    assert recipe_from_args(args) == setting.recipe
    assert data.root == setting.data.root
    assert all(np.array_equal(getattr(split, k), getattr(setting.split, k)) for k in ("train", "val", "test"))


def test_attention_snapshots_keep_every_epoch_and_come_back_the_same(cache):
    setting = book_setting(n_faces=N, epochs=2, device="cpu")
    start, result, kept = setting.attention_snapshots()
    assert start.recipe["attention_epochs"] == 0 and result.recipe["attention_epochs"] == 2
    assert [load_checkpoint(p)["epoch"] for p in kept] == [1, 2]
    last = load_checkpoint(kept[-1])["model"]
    final = load_checkpoint(result.checkpoint)["model"]
    # the book recipe keeps the best validation epoch: the stage ends with that epoch's weights
    best = load_checkpoint(kept[result.best_epochs["attention"] - 1])["model"]
    assert all(torch.equal(best[k], final[k]) for k in final)
    # found again without training
    stamps = [p.stat().st_mtime_ns for p in kept]
    assert [p.stat().st_mtime_ns for p in setting.attention_snapshots()[2]] == stamps
    # lost (the model was trained without keeping them): trained again, to the same weights
    for p in kept:
        p.unlink()
    again = setting.attention_snapshots()[2]
    assert [p.name for p in again] == [p.name for p in kept]
    weights = load_checkpoint(again[-1])["model"]
    assert all(torch.equal(weights[k], last[k]) for k in last)


@pytest.fixture(scope="module")
def book_cache(tmp_path_factory):
    """One cache for the book's 3,000 faces, drawn once for the tests that need them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADPF_CACHE_DIR", str(tmp_path_factory.mktemp("book-cache")))
        yield


@pytest.mark.parametrize("name,profile", [("ablation-synthetic", "cpu-sgd"), ("heads-synthetic", "cpu-sgd"),
                                          ("main-stream-synthetic", "cpu"), ("main-stream-ablation-synthetic", "cpu")])
def test_the_book_records_are_made_at_the_book_setting(book_cache, name, profile):
    from adpf.experiments import BOOK_RECORDS

    setting = book_setting(profile)
    argv = shlex.split(BOOK_RECORDS[name])
    assert argv[:2] == ["adpf", "experiments"] and f"benchmarks/results/{name}.json" in argv
    args = build_parser().parse_args(argv[1:])
    config = config_from_args(args)
    data = data_from_args(args, config.image_size)
    split = split_from_args(args, data)
    assert config == setting.config and data.root == setting.data.root
    assert recipe_from_args(args) == setting.recipe
    assert all(np.array_equal(getattr(split, k), getattr(setting.split, k)) for k in ("train", "val", "test"))
    assert args.seeds and 0 in args.seeds


def test_the_converged_record_is_the_book_setting_trained_longer(book_cache):
    from adpf.experiments import BOOK_RECORDS

    setting = book_setting("cpu-sgd")
    args = build_parser().parse_args(shlex.split(BOOK_RECORDS["converged-synthetic"])[1:])
    config = config_from_args(args)
    data = data_from_args(args, config.image_size)
    split = split_from_args(args, data)
    assert config == setting.config and data.root == setting.data.root
    assert all(np.array_equal(getattr(split, k), getattr(setting.split, k)) for k in ("train", "val", "test"))
    recipe = recipe_from_args(args)
    assert recipe.attention_epochs == recipe.fusion_epochs == 40
    assert recipe.attention_epochs > setting.recipe.attention_epochs
    assert recipe.replace(attention_epochs=setting.recipe.attention_epochs,
                          fusion_epochs=setting.recipe.fusion_epochs) == setting.recipe
    assert sorted(args.seeds) == [0, 1, 2] and "benchmarks/results/converged-synthetic.json" in args.record


def test_the_fullres_record_is_the_converged_one_with_fusionnets_first_stride_removed():
    from adpf.experiments import BOOK_RECORDS

    def parsed(name):
        return build_parser().parse_args(shlex.split(BOOK_RECORDS[name])[1:])

    full, converged = parsed("converged-fullres-synthetic"), parsed("converged-synthetic")
    assert config_from_args(full) == config_from_args(converged).replace(fusion_stem_stride=1)
    assert recipe_from_args(full) == recipe_from_args(converged)
    assert (full.data, full.synthetic_n, full.split_seed, full.seeds) == (
        converged.data, converged.synthetic_n, converged.split_seed, converged.seeds)
    # the FusionNet models only: AttentionNet alone would be the converged record's, unchanged
    assert full.rows.split(",") == ["ADPF", "plain CNN", "fixed patches"]
    assert full.attention and "benchmarks/results/converged-fullres-synthetic.json" in full.record


def test_the_longer_record_is_the_utkface_one_with_a_longer_second_stage():
    from adpf.experiments import BOOK_RECORDS

    def parsed(name):
        return build_parser().parse_args(shlex.split(BOOK_RECORDS[name])[1:])

    longer, real = parsed("longer-utkface"), parsed("ablation-utkface")
    assert config_from_args(longer) == config_from_args(real)
    assert recipe_from_args(longer) == recipe_from_args(real).replace(fusion_epochs=40, fusion_boxes="once")
    assert recipe_from_args(longer).attention_epochs == recipe_from_args(real).attention_epochs
    assert (longer.data, longer.split_seed, longer.seeds, longer.test_on) == (
        real.data, real.split_seed, real.seeds, real.test_on)
    assert longer.rows.split(",") == [m for m in real.rows.split(",") if m != "ResNet-18 (reference)"]
    assert "benchmarks/results/longer-utkface.json" in longer.record
