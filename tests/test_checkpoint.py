"""Atomic checkpoints, weights_only loading, clear errors, random states, models back from files."""
import os
import random

import numpy as np
import pytest
import torch

from adpf.checkpoint import (CheckpointError, check_config, load_checkpoint, load_model, load_model_state,
                             rng_state, save_checkpoint, set_rng_state)
from adpf.config import get_preset
from adpf.networks import build_model


TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)


def tiny(**changes):
    return get_preset("cpu", **{**TINY, **changes})


def state_for(config):
    torch.manual_seed(0)
    return {"config": config.to_dict(), "model": build_model(config).state_dict(), "epoch": 3}


def test_round_trip_keeps_every_tensor(tmp_path):
    state = state_for(tiny())
    path = save_checkpoint(state, tmp_path / "sub" / "ck.pt")
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and back["config"] == state["config"]
    assert back["model"].keys() == state["model"].keys()
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v), k
    assert os.listdir(tmp_path / "sub") == ["ck.pt"]  # no temporary file left behind


def test_a_crash_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(state_for(tiny()), tmp_path / "ck.pt")
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(state_for(tiny(heads=2, x_channels=4, fusion_channels=(4, 6))), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_missing_and_corrupted_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.pt: no such file"):
        load_checkpoint(tmp_path / "nothere.pt")
    good = save_checkpoint(state_for(tiny()), tmp_path / "good.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot be read"):
        load_checkpoint(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not an adpf checkpoint"):
        load_checkpoint(other)


class Pickled:
    pass


def test_loading_is_weights_only(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"config": {}, "model": {}, "extra": Pickled()}, path)
    with pytest.raises(CheckpointError, match="pickled.pt: cannot be read"):
        load_checkpoint(path)


def test_config_mismatch_lists_each_differing_field(tmp_path):
    state = state_for(tiny())
    check_config(state, tiny(), "a.pt")  # same config: silent
    with pytest.raises(CheckpointError, match=r"a\.pt: config differs: .*sigma.*diversity_weight|"
                                              r"a\.pt: config differs: .*diversity_weight.*sigma"):
        check_config(state, tiny(sigma=3.0, diversity_weight=0.5), "a.pt")


def test_shape_and_key_mismatches_are_named(tmp_path):
    state = state_for(tiny())["model"]
    wider = build_model(tiny(key_channels=8))
    with pytest.raises(CheckpointError, match=r"x\.pt does not fit the model: .*shape mismatch"):
        load_model_state(wider, state, "x.pt")
    other = build_model(tiny(variant="attention_only"))
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_model_state(other, state, "x.pt")
    model = build_model(tiny())
    load_model_state(model, state, "x.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_rng_state_restores_every_generator(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(4), np.random.normal(), random.gauss(0, 1), torch.rand(3, generator=generator)
    saved = save_checkpoint({"config": {}, "model": {}, "rng": rng_state(generator)}, tmp_path / "r.pt")

    def draw():
        return (torch.rand(5), np.random.normal(size=3), np.random.randint(0, 10 ** 6, 3),
                [random.random() for _ in range(3)], random.gauss(0, 1), torch.rand(4, generator=generator))

    first = draw()
    other = torch.Generator().manual_seed(99)
    set_rng_state(load_checkpoint(saved)["rng"], other)
    second = draw()[:-1] + (torch.rand(4, generator=other),)
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("variant", ["adpf", "attention_only", "plain_cnn", "fixed_patches"])
def test_load_model_rebuilds_the_network(tmp_path, variant):
    config = tiny(variant=variant)
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = save_checkpoint({"config": config.to_dict(), "model": model.state_dict()}, tmp_path / "m.pt")
    back = load_model(path)
    x = torch.rand(2, 3, 16, 16)
    assert not back.training and back.config == config
    assert torch.equal(back(x).logits, model(x).logits)
    if variant == "adpf":
        assert back.attention_frozen
