"""Atomic checkpoints, weights_only loading, clear errors, random states, models back from files."""
import os
import pickle
import random
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from adpf.checkpoint import (CheckpointError, atomic_write, check_config, checkpoint_dict, config_from_checkpoint,
                             current_umask, is_temporary, load_checkpoint, load_model, load_model_state, rng_state,
                             save_checkpoint, set_rng_state, temporary_folder, temporary_owner)
from adpf.config import get_preset
from adpf.data.prepared import write_prepared
from adpf.networks import build_model


TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)


def tiny(**changes):
    return get_preset("cpu", **{**TINY, **changes})


def state_for(config):
    torch.manual_seed(0)
    return checkpoint_dict(config, build_model(config).state_dict(), "single", 3)


def test_checkpoint_dict_holds_what_resuming_needs_and_reads_back(tmp_path):
    config = tiny(variant="plain_cnn")
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 16, 16)).logits.sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    generator = torch.Generator().manual_seed(3)
    full = checkpoint_dict(config, model.state_dict(), "single", 2, optimizer=optimizer.state_dict(),
                           scheduler=scheduler.state_dict(), rng=rng_state(generator), meta={"history": [{"epoch": 1}]})
    assert list(full) == ["config", "model", "stage", "epoch", "optimizer", "scheduler", "rng", "meta"]
    back = load_checkpoint(save_checkpoint(full, tmp_path / "full.pt"))
    assert config_from_checkpoint(back) == config and back["stage"] == "single" and back["epoch"] == 2
    assert back["meta"] == {"history": [{"epoch": 1}]} and back["scheduler"] == scheduler.state_dict()
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(back["optimizer"]["state"][0]["momentum_buffer"], momentum)
    assert torch.equal(back["rng"]["loader"], generator.get_state())
    # what is not given is left out, not stored as None
    assert list(checkpoint_dict(config, model.state_dict(), "single", 0)) == ["config", "model", "stage", "epoch"]


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


def rejected(tmp_path, name, content):
    """The one-line message ``load_checkpoint`` gives for a file of this content."""
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"checkpoint {path}: ")
    assert "weights_only" not in message and "likely succeed" not in message  # not torch's advice
    return message


def test_rejected_files_are_named_with_what_is_wrong(tmp_path):
    good = save_checkpoint(state_for(tiny()), tmp_path / "good.pt").read_bytes()
    assert rejected(tmp_path, "cut.pt", good[: len(good) // 2]).endswith("truncated (its zip archive has no end: "
                                                                          "the file was cut short or is still "
                                                                          "being copied)")
    assert rejected(tmp_path, "empty.pt", b"").endswith("the file is empty (0 bytes)")
    assert "wrong format" in rejected(tmp_path, "junk.pt", b"\x00not a checkpoint at all")
    assert "wrong format" in rejected(tmp_path, "plain.pkl", pickle.dumps({"a": 1}))
    assert "wrong format" in rejected(tmp_path, "array.npy", lambda p: np.save(p, np.zeros(3)))
    message = rejected(tmp_path, "evil.pt", lambda p: torch.save({"config": {}, "model": {}, "x": Pickled()}, p))
    assert f"refused, it holds the Python object {__name__}.Pickled" in message and "unsafe pickle" in message

    def zipped(p):
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("notes.txt", "hello")

    assert rejected(tmp_path, "notes.zip", zipped).endswith("a zip archive, but not a PyTorch checkpoint")


def test_a_config_or_model_of_the_wrong_type_is_named(tmp_path):
    # a string where the config belongs: once "unknown ADPFConfig field(s): ['a', 'd', 'f', 'p']"
    message = rejected(tmp_path, "s.pt", lambda p: torch.save({"config": "adpf", "model": {}}, p))
    assert message.endswith("not an adpf checkpoint ('config' is a str, expected a dict)")
    message = rejected(tmp_path, "m.pt", lambda p: torch.save({"config": {}, "model": {"w": [1.0]}}, p))
    assert message.endswith("not an adpf checkpoint ('model' entries that are not tensors: ['w'])")


def test_a_config_with_zero_heads_is_a_bad_config(tmp_path):
    # once a ZeroDivisionError traceback from ADPFConfig.__post_init__
    path = save_checkpoint({"config": {**tiny().to_dict(), "heads": 0}, "model": {}}, tmp_path / "h0.pt")
    with pytest.raises(CheckpointError, match=r"h0\.pt: bad config \(heads must be a whole number >= 1, got 0\)"):
        load_model(path)


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
    stage = {"adpf": "fusion", "attention_only": "attention"}.get(variant, "single")
    path = save_checkpoint(checkpoint_dict(config, model.state_dict(), stage, 0), tmp_path / "m.pt")
    back = load_model(path)
    x = torch.rand(2, 3, 16, 16)
    assert not back.training and back.config == config
    assert torch.equal(back(x).logits, model(x).logits)
    if variant == "adpf":
        assert back.attention_frozen


@pytest.fixture
def umask():
    """Set a umask for one test (restored afterwards)."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)],
                         ids=["022", "027", "002", "077"])
def test_new_files_get_the_users_umask(tmp_path, umask, mask, mode):
    # once always 0600 (mkstemp's mode), whatever the umask
    umask(mask)
    assert current_umask() == mask
    path = save_checkpoint(state_for(tiny()), tmp_path / "ck.pt")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    reference = tmp_path / "plain"
    reference.write_bytes(b"")  # what open() makes under the same umask
    assert stat.S_IMODE(reference.stat().st_mode) == mode


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = atomic_write(tmp_path / "r.json", lambda f: f.write("{}"), mode="w")
    path.chmod(0o600)
    atomic_write(path, lambda f: f.write("[]"), mode="w")
    assert path.read_text() == "[]" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_umask_is_read_without_changing_it(umask):
    umask(0o037)
    code = "import os; from adpf.checkpoint import current_umask; print(current_umask(), os.umask(0))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(0o037), str(0o037)]


def test_a_failed_write_names_the_target_not_its_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.mkdir()  # a folder where the file should go
    with pytest.raises(IsADirectoryError) as error:
        atomic_write(target, lambda f: f.write("{}"), mode="w")
    assert error.value.filename == str(target) and ".tmp" not in str(error.value)
    assert "cannot be written" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(OSError) as error:
        atomic_write(blocked / "sub" / "r.json", lambda f: f.write("{}"), mode="w")
    assert error.value.filename == str(blocked / "sub" / "r.json")


def test_the_temporary_holds_the_writers_process_id(tmp_path):
    seen = []

    def interrupted(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "ck.pt", interrupted)
    assert len(seen) == 1 and seen[0].startswith(f".ck.pt.tmp-{os.getpid()}-")
    assert is_temporary(seen[0]) and temporary_owner(seen[0]) == os.getpid()
    assert list(tmp_path.iterdir()) == []  # an interruption removes it


def test_temporary_names():
    assert temporary_owner(".checkpoint.pt.tmp-123-ab_c9x") == 123
    for older in (".checkpoint.pt.k3j4h5g6.tmp", ".synthetic-s64-n10000-seed0-v2.tmp-ab12cd34"):
        assert is_temporary(older) and temporary_owner(older) is None
    for other in ("checkpoint.pt", "stage.json", ".hidden", "x.tmp-1-ab", ".tmp-1-ab"):
        assert not is_temporary(other) and temporary_owner(other) is None


@pytest.mark.parametrize("mask, mode", [(0o022, 0o755), (0o027, 0o750)], ids=["022", "027"])
def test_folders_written_through_a_temporary_get_the_users_umask(tmp_path, umask, mask, mode):
    # once 0700 (mkdtemp's mode): a prepared dataset folder was unreadable to the user's group
    umask(mask)
    folder = temporary_folder(tmp_path / "set")
    assert folder.parent == tmp_path and temporary_owner(folder.name) == os.getpid()
    assert stat.S_IMODE(folder.stat().st_mode) == mode
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"age": [1.0, 2.0], "subject": [0, 1]})
    root = write_prepared(tmp_path / "prepared", rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), meta, name="t")
    assert stat.S_IMODE(root.stat().st_mode) == mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in root.iterdir()} == {mode & 0o666}
