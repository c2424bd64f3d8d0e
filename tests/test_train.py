"""The two-stage training on tiny data: stages per variant, the losses they use, train-or-load and
shared stage 1, exact resume after a crash, the result record, and bad input."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from adpf.checkpoint import load_checkpoint, load_model
from adpf.config import get_preset
from adpf.data.prepared import PreparedFaces, load_prepared, write_prepared
from adpf.evaluate import predict
from adpf.networks import build_model
from adpf.losses import NonFiniteOutputError
from adpf.recipes import RECIPES, Recipe, get_recipe
from adpf.train import NonFiniteTrainingError, lr_factor, train

TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)
RECIPE = Recipe(attention_epochs=2, fusion_epochs=2, batch_size=8, lr=0.05, schedule="cosine", warmup_epochs=1,
                pad=2, device="cpu")
SPLIT = {"train": np.arange(0, 24), "val": np.arange(24, 32), "test": np.arange(32, 40)}


def tiny(**changes):
    return get_preset("cpu", **{**TINY, **changes})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 40
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, n).astype(float), "subject": np.arange(n) // 2})
    masks = np.zeros((n, 2, 16, 16), dtype=bool)
    masks[:, 0, :5], masks[:, 1, :, :4] = True, True
    root = write_prepared(tmp_path_factory.mktemp("data") / "tiny", images, meta, name="tiny",
                          masks=masks, region_names=("top", "left"))
    return load_prepared(root)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(config, data, recipe=RECIPE, **kwargs):
    """train() that also returns the (stage, epoch) of every epoch it actually trained."""
    trained = []
    result = train(config, data, SPLIT, recipe, progress=False,
                   callback=lambda stage, row, model: trained.append((stage.name, row["epoch"])), **kwargs)
    return result, trained


def test_lr_schedules():
    paper = RECIPES["paper"]
    assert (paper.batch_size, paper.lr, paper.lr_step, paper.lr_gamma, paper.attention_epochs,
            paper.fusion_epochs, paper.schedule) == (32, 0.1, 50, 0.1, 200, 200, "step")
    for epoch in range(200):
        assert lr_factor(paper, epoch * 10 + 3, 10, 200) == pytest.approx(0.1 ** (epoch // 50))
    cosine = Recipe(schedule="cosine", warmup_epochs=2)
    steps, epochs = 5, 8
    for step in range(steps * epochs):
        expected = 0.5 * (1 + math.cos(math.pi * step / (steps * epochs))) * min(1.0, (step + 1) / 10)
        assert lr_factor(cosine, step, steps, epochs) == pytest.approx(expected)
    with pytest.raises(KeyError, match="unknown recipe"):
        get_recipe("nope")


def test_the_named_recipes_keep_what_was_measured():
    for name in ("cpu", "book"):  # SGD lr 0.02 clipped at norm 1, cosine, no warm-up (see RECIPES)
        r = RECIPES[name]
        assert (r.optimizer, r.lr, r.clip_grad_norm, r.schedule, r.warmup_epochs, r.batch_size) == \
            ("sgd", 0.02, 1.0, "cosine", 0, 32)
    gpu, cpu = RECIPES["gpu"], RECIPES["cpu"]
    assert (gpu.batch_size, gpu.amp, gpu.channels_last, gpu.schedule) == (256, True, True, "step")
    assert gpu.lr == pytest.approx(cpu.lr * gpu.batch_size / cpu.batch_size)  # the linear scaling rule
    assert gpu.warmup_epochs > 0 and gpu.clip_grad_norm == cpu.clip_grad_norm
    # the paper's four phases (x0.1 every 50 of 200 epochs), compressed
    assert gpu.attention_epochs == gpu.fusion_epochs == 4 * gpu.lr_step


def test_adpf_trains_attention_net_then_fusion_net_with_attention_frozen(data, cache):
    result, trained = run(tiny(), data)
    assert trained == [("attention", 1), ("attention", 2), ("fusion", 1), ("fusion", 2)]
    assert [r["epoch"] for r in result.history["attention"]] == [1, 2]
    # stage 1 is Eq. 14 (diversity term present), stage 2 is L_AE alone
    assert all("loss_diversity" in r for r in result.history["attention"])
    assert not any("loss_diversity" in r for r in result.history["fusion"])
    for r in result.history["attention"] + result.history["fusion"]:
        assert r["loss"] > 0 and r["train_mae"] >= 0 and r["images_per_s"] > 0 and "val_mae" in r
        assert r["loss"] == pytest.approx(r["train_mae"] + r["loss_kl"] + 0.01 * r.get("loss_diversity", 0.0), rel=1e-4)
    # stage 2 leaves every AttentionNet tensor (weights and BatchNorm statistics) as stage 1 ended
    final = load_checkpoint(result.checkpoint)["model"]
    stage1 = load_checkpoint(result.checkpoint.replace(f"fusion-{result.stage_keys['fusion']}",
                                                       f"attention-{result.stage_keys['attention']}"))
    assert stage1["config"]["variant"] == "attention_only"
    for k, v in stage1["model"].items():
        assert torch.equal(final[f"attention_net.{k}"], v), k
    # the test MAE is the model's MAE on the test rows, batched as the training evaluates them
    model = load_model(result.checkpoint)
    loader = DataLoader(PreparedFaces(data, SPLIT["test"]), batch_size=2 * RECIPE.batch_size)
    predictions = predict(model, loader)
    assert result.mae == pytest.approx(np.abs(predictions.errors).mean(), abs=1e-5)
    # in other batches the convolutions round differently and the boxes come from thresholded
    # maps, so the ages agree closely, not to the last bit
    other = predict(model, DataLoader(PreparedFaces(data, SPLIT["test"]), batch_size=5))
    assert np.abs(other.errors - predictions.errors).max() < 0.05
    assert result.metrics["test"]["count"] == 8 and result.metrics["val"]["count"] == 8
    record = json.loads(json.dumps(result.to_dict()))
    assert record["config"]["variant"] == "adpf" and record["split"]["sizes"] == {"train": 24, "val": 8, "test": 8}
    assert set(record["throughput"]) == {"attention", "fusion"} and record["hardware"]["device"] == "cpu"


def test_train_or_load_shares_what_it_can(data, cache):
    first, trained = run(tiny(), data)
    assert len(trained) == 4 and not first.cached
    again, trained = run(tiny(), data)
    assert trained == [] and again.cached and again.mae == first.mae
    alone, trained = run(tiny(variant="attention_only"), data)
    assert trained == [] and not alone.cached  # AttentionNet alone is ADPF's stage 1
    assert alone.history["attention"] == first.history["attention"]
    no_ranking, trained = run(tiny(ranking=False), data)
    assert trained == [("fusion", 1), ("fusion", 2)]
    no_diversity, trained = run(tiny(diversity_weight=0.0), data)
    assert [s for s, _ in trained] == ["attention"] * 2 + ["fusion"] * 2
    assert "loss_diversity" in no_diversity.history["attention"][0]
    fresh, trained = run(tiny(), data, use_cache=False)
    assert len(trained) == 4
    for k, v in load_checkpoint(fresh.checkpoint)["model"].items():  # seeded: the same weights again
        assert torch.equal(v, load_checkpoint(first.checkpoint)["model"][k]), k


@pytest.mark.parametrize("variant", ["plain_cnn", "fixed_patches"])
def test_baselines_train_one_stage_with_the_age_loss(data, cache, variant):
    result, trained = run(tiny(variant=variant), data)
    assert trained == [("single", 1), ("single", 2)]
    assert set(result.history) == {"single"} and "loss_diversity" not in result.history["single"][0]
    assert load_model(result.checkpoint).config.variant == variant


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at,on_device", [(("attention", 1), False), (("fusion", 1), False),
                                                (("attention", 1), True)])
def test_resume_after_a_crash_ends_with_the_same_weights(data, tmp_path, monkeypatch, crash_at, on_device):
    recipe = RECIPE.replace(data_on_device=on_device)
    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path / "straight"))
    straight, _ = run(tiny(), data, recipe)

    monkeypatch.setenv("ADPF_CACHE_DIR", str(tmp_path / "crashed"))

    def crash(stage, row, model):
        if (stage.name, row["epoch"]) == crash_at:
            raise Crash()

    with pytest.raises(Crash):
        train(tiny(), data, SPLIT, recipe, progress=False, callback=crash)
    resumed, trained = run(tiny(), data, recipe)
    expected = [("attention", 2), ("fusion", 1), ("fusion", 2)] if crash_at[0] == "attention" else [("fusion", 2)]
    assert trained == expected
    a, b = load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for stage in ("attention", "fusion"):
        for ra, rb in zip(straight.history[stage], resumed.history[stage]):
            assert ra["loss"] == rb["loss"] and ra["val_mae"] == rb["val_mae"]
    assert resumed.mae == straight.mae


def test_bad_input_gets_a_clear_error(data, cache):
    with pytest.raises(ValueError, match=r"tiny: images are 16×16, config.image_size is 64"):
        train(get_preset("cpu"), data, SPLIT, RECIPE, progress=False)
    with pytest.raises(ValueError, match=r"split 'test': indices must be .* 0\.\.39"):
        train(tiny(), data, {**SPLIT, "test": np.array([38, 40])}, RECIPE, progress=False)
    with pytest.raises(ValueError, match="split 'test' is empty"):
        train(tiny(), data, {**SPLIT, "test": []}, RECIPE, progress=False)
    with pytest.raises(ValueError, match="split has no 'train'"):
        train(tiny(), data, {"test": SPLIT["test"]}, RECIPE, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        Recipe(batch_size=0)


def test_gradient_clipping_bounds_every_step(data, cache):
    """With momentum 0.9 and no weight decay a step moves the weights by at most 10·lr·clip."""
    recipe = RECIPE.replace(weight_decay=0.0, schedule="step", warmup_epochs=0, attention_epochs=1)
    names = [n for n, _ in build_model(tiny(variant="attention_only")).named_parameters()]

    def moved(**changes):
        start = train(tiny(variant="attention_only"), data, SPLIT, recipe.replace(attention_epochs=0), progress=False)
        end = train(tiny(variant="attention_only"), data, SPLIT, recipe.replace(**changes), progress=False)
        a, b = load_checkpoint(start.checkpoint)["model"], load_checkpoint(end.checkpoint)["model"]
        return math.sqrt(sum(float((a[n] - b[n]).square().sum()) for n in names))

    steps = len(SPLIT["train"]) // RECIPE.batch_size
    clip = 1e-4
    assert moved(clip_grad_norm=clip) <= steps * 10 * RECIPE.lr * clip * (1 + 1e-4)
    assert moved() > 100 * steps * 10 * RECIPE.lr * clip


def test_the_recipe_picks_the_optimizer(data, cache):
    from adpf.train import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(Recipe(lr=0.1, momentum=0.8, weight_decay=1e-4), params)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 1e-4
    adamw = make_optimizer(Recipe(optimizer="adamw", lr=1e-3, weight_decay=1e-4), params)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["lr"] == 1e-3 and adamw.defaults["weight_decay"] == 1e-4
    assert RECIPES["paper"].optimizer == "sgd"
    with pytest.raises(ValueError, match="optimizer must be"):
        Recipe(optimizer="adam")
    # a different optimiser is a different training: its own cache entry, its own weights
    sgd_run, _ = run(tiny(variant="plain_cnn"), data)
    adamw_run, trained = run(tiny(variant="plain_cnn"), data, RECIPE.replace(optimizer="adamw", lr=1e-3))
    assert trained and adamw_run.stage_keys != sgd_run.stage_keys
    assert adamw_run.recipe["optimizer"] == "adamw"


def nan_weights(model):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


def test_a_nan_model_is_an_error_not_a_weak_model(data):
    # once: every face predicted 4.5 +- 2.9 (the uniform distribution), "MAE" reported
    model = nan_weights(build_model(tiny(variant="attention_only")))
    loader = DataLoader(PreparedFaces(data, SPLIT["test"]), batch_size=5)
    with pytest.raises(NonFiniteOutputError, match=r"not finite for 5 of 5 faces \(5 with NaN.*"
                                                   r"dataset items 32, 33, 34, 35, 36 of the first such batch"):
        predict(model, loader)


def test_the_cli_names_the_checkpoint_of_a_nan_model(data, cache, tmp_path, capsys):
    from adpf.checkpoint import save_checkpoint
    from adpf.cli import main

    result, _ = run(tiny(variant="attention_only"), data)
    state = load_checkpoint(result.checkpoint)
    state["model"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in state["model"].items()}
    broken = tmp_path / "nan.pt"
    save_checkpoint(state, broken)
    assert main(["evaluate", str(broken), "--data", str(data.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"adpf evaluate: error: {broken}: the network output is not finite") and "\n" not in err


def poison_step(monkeypatch, at_call: int):
    """Make the loss of the ``at_call``-th training step (1-based) NaN, keeping its graph."""
    import adpf.train as train_module

    real, calls = train_module.stage_loss, []

    def stage_loss(stage, output, age):
        losses = real(stage, output, age)
        calls.append(1)
        if len(calls) == at_call:
            losses.total = losses.total * float("nan")
        return losses

    monkeypatch.setattr(train_module, "stage_loss", stage_loss)


@pytest.mark.parametrize("on_device", [False, True])
def test_training_that_goes_nan_stops_and_keeps_the_last_good_checkpoint(data, cache, monkeypatch, on_device):
    # once: the NaN went on into every later step and epoch, and was saved as the checkpoint
    recipe = RECIPE.replace(data_on_device=on_device)
    steps = len(SPLIT["train"]) // RECIPE.batch_size  # 3 steps per epoch
    poison_step(monkeypatch, at_call=steps + 2)  # epoch 2, step 2
    trained = []
    with pytest.raises(NonFiniteTrainingError,
                       match=r"stage attention \(attention_only\) went non-finite in epoch 2/2, step 2/3: loss nan "
                             r".*stopped before this step's update\. The last good checkpoint is (?P<path>.*)"
                             r"checkpoint\.pt \(epoch 1\)") as e:
        train(tiny(variant="attention_only"), data, SPLIT, recipe, progress=False,
              callback=lambda stage, row, model: trained.append(row["epoch"]))
    assert trained == [1]
    path = str(e.value).split("The last good checkpoint is ")[1].split(" (epoch")[0]
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    model = load_model(path)
    assert np.isfinite(predict(model, DataLoader(PreparedFaces(data, SPLIT["test"]), batch_size=8)).predicted).all()


def test_a_diverging_learning_rate_stops_with_a_clear_message(data, cache):
    recipe = RECIPE.replace(lr=1e8, warmup_epochs=0, schedule="step", clip_grad_norm=None)
    with pytest.raises(NonFiniteTrainingError, match=r"stage attention \(attention_only\) went non-finite in epoch 1/2") as e:
        train(tiny(variant="attention_only"), data, SPLIT, recipe, progress=False)
    assert "No epoch had finished, so there is no checkpoint." in str(e.value)


def test_keep_best_ends_each_stage_with_its_best_validation_epoch(data, cache):
    recipe = RECIPE.replace(attention_epochs=4, fusion_epochs=4, lr=0.3, keep_best=True)
    result, trained = run(tiny(), data, recipe)
    for stage in ("attention", "fusion"):
        history = result.history[stage]
        best = min(history, key=lambda r: (r["val_mae"], r["epoch"]))["epoch"]
        assert result.best_epochs[stage] == best
        folder = Path(result.checkpoint).parents[1] / f"{stage}-{result.stage_keys[stage]}"
        kept, saved = load_checkpoint(folder / "checkpoint.pt"), load_checkpoint(folder / "best.pt")
        assert kept["meta"]["best_epoch"] == best and saved["epoch"] == best
        for k, v in saved["model"].items():  # the stage's checkpoint holds the best epoch's weights
            assert torch.equal(kept["model"][k], v), k
    # the validation MAE of the kept model is the best epoch's (the fusion stage ends the model)
    assert result.metrics["val"]["mae"] == pytest.approx(
        min(r["val_mae"] for r in result.history["fusion"]), abs=1e-4)
    # without keep_best the last epoch is kept, and the record says None
    last, _ = run(tiny(), data, recipe.replace(keep_best=False))
    assert last.best_epochs == {"attention": None, "fusion": None}
    assert last.metrics["val"]["mae"] == pytest.approx(last.history["fusion"][-1]["val_mae"], abs=1e-4)


def test_the_plus_minus_is_calibrated_on_validation_and_kept_in_the_checkpoint(data, cache):
    result, _ = run(tiny(variant="plain_cnn"), data)
    model = load_model(result.checkpoint)
    scale = model.config.std_scale
    assert scale != 1.0 and load_checkpoint(result.checkpoint)["config"]["std_scale"] == scale
    val = predict(model, DataLoader(PreparedFaces(data, SPLIT["val"]), batch_size=8))
    # a plain reference: the 68.27 % quantile of |error| / raw std on the validation faces
    ratios = sorted(abs(e) / (s / scale) for e, s in zip(val.errors, val.std))
    assert scale == pytest.approx(float(np.quantile(ratios, math.erf(1 / math.sqrt(2)))), rel=1e-5)
    assert result.metrics["val"]["calibration"]["within_1std"] == pytest.approx(
        np.mean(np.abs(val.errors) <= val.std), abs=1e-9)
    # the scale changes the ± only, never the age
    raw = load_model(result.checkpoint)
    raw.config = raw.config.replace(std_scale=1.0)
    plain = predict(raw, DataLoader(PreparedFaces(data, SPLIT["val"]), batch_size=8))
    assert np.allclose(plain.predicted, val.predicted) and np.allclose(plain.std * scale, val.std)


def test_a_non_finite_step_and_every_later_one_leave_weights_and_optimizer_untouched():
    """The check without a sync: the tally marks the step on the device and the fused optimiser
    skips it there, so the weights stay those from before the bad step's update."""
    from adpf.losses import Losses
    from adpf.train import EpochTally, make_optimizer, skip_update_if

    for recipe in (Recipe(), Recipe(optimizer="adamw", lr=1e-3)):
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(4))
        optimizer, tally = make_optimizer(recipe, [weight]), EpochTally(torch.device("cpu"))
        start, after = weight.detach().clone(), []
        for step, scale in enumerate([1.0, float("nan"), 1.0]):
            loss = (weight * scale).square().sum()
            optimizer.zero_grad()
            loss.backward()
            skip_update_if(optimizer, tally.add(step, Losses(total=loss, mae=loss.detach(), kl=loss.detach()), 2))
            optimizer.step()
            after.append(weight.detach().clone())
        assert not torch.equal(after[0], start)  # the finite step updated
        assert torch.equal(after[1], after[0]) and torch.equal(after[2], after[0])  # the bad one and the next did not
        _, bad_step, bad_values = tally.read()
        assert bad_step == 1 and math.isnan(bad_values["total"])


def test_the_tally_averages_the_loss_parts_over_the_images():
    from adpf.losses import Losses
    from adpf.train import EpochTally

    tally = EpochTally(torch.device("cpu"))
    for step, (value, n) in enumerate([(1.0, 8), (4.0, 2)]):
        v = torch.tensor(value)
        assert not tally.add(step, Losses(total=v, mae=2 * v, kl=v - 1), n)
    means, bad_step, _ = tally.read()
    assert bad_step is None and means == pytest.approx({"total": 1.6, "mae": 3.2, "kl": 0.6})


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor methods that read a value back to Python (on CUDA: a host sync)."""

    READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "nonzero"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", ["attention_only", "adpf"])
def test_the_training_step_reads_nothing_back(data, cache, variant):
    """The loop with its data on the device reads values back once per epoch, not per step:
    a training of 6 steps reads exactly as often as one of 3 (the GPU script counts the same
    difference with CUDA's sync debug mode). The former loop read 4 (stage 1) and 3 (stage 2)
    loss parts a step."""
    recipe = RECIPE.replace(data_on_device=True, batch_size=4, attention_epochs=1, fusion_epochs=1,
                            clip_grad_norm=1.0)
    reads = {}
    for steps in (3, 6):
        split = {"train": np.arange(steps * recipe.batch_size), "val": [], "test": SPLIT["test"][:1]}
        with HostReads() as counter:
            train(tiny(variant=variant), data, split, recipe, use_cache=False, progress=False)
        reads[steps] = counter.count
    assert reads[3] > 0 and reads[6] == reads[3], reads


def test_a_kept_best_stage_found_before_its_record_resumes_to_the_end(data, cache):
    # a second run (another process, or a crash before stage.json) finds the stage's final
    # checkpoint, which holds the best epoch's weights: it resumes with nothing left to train
    recipe = RECIPE.replace(attention_epochs=3, lr=0.3, keep_best=True)
    config = tiny(variant="attention_only")
    first, _ = run(config, data, recipe)
    folder = Path(first.checkpoint).parent
    (folder / "stage.json").unlink()
    (folder / "result.json").unlink()
    again, trained = run(config, data, recipe)
    assert trained == [] and again.best_epochs == first.best_epochs
    for k, v in load_checkpoint(first.checkpoint)["model"].items():
        assert torch.equal(load_checkpoint(again.checkpoint)["model"][k], v), k


@pytest.mark.parametrize("on_device, crop_scale", [(False, 1.0), (True, 1.0), (False, 0.875), (True, 0.875)])
def test_boxes_found_once_are_the_stored_faces_boxes_moved_with_each_augmentation(data, cache, monkeypatch,
                                                                                  on_device, crop_scale):
    """recipe.fusion_boxes="once": stage 1 is the one "every_step" trains; before stage 2 the frozen
    AttentionNet finds every training face's boxes on the face as stored, and each step crops
    those boxes moved as its augmentation moved the face, without running AttentionNet; with
    windows smaller than the face (crop_scale, open choice 21) the boxes grow with the face."""
    import adpf.train as train_module
    from adpf.networks import AttentionNet
    from adpf.patches import move_boxes

    recipe = RECIPE.replace(data_on_device=on_device, crop_scale=crop_scale)
    every_step, _ = run(tiny(), data, recipe)
    steps, calls = [], []
    original_step = train_module.train_step

    def recording_step(stage, step, forward, images, age, *args):
        steps.append((stage.name, images.clone(), args[-1]))
        return original_step(stage, step, forward, images, age, *args)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    monkeypatch.setattr(AttentionNet, "__call__", lambda self, x: calls.append(len(x)) or nn_call(self, x))
    with pytest.raises(ValueError, match="fusion_boxes must be"):
        recipe.replace(fusion_boxes="twice")
    once, trained = run(tiny(), data, recipe.replace(fusion_boxes="once"))
    assert trained == [("fusion", 1), ("fusion", 2)]  # stage 1 shared, stage 2 its own
    assert once.stage_keys["attention"] == every_step.stage_keys["attention"]
    assert once.stage_keys["fusion"] != every_step.stage_keys["fusion"]
    fusion_steps = [(images, boxes) for name, images, boxes in steps if name == "fusion"]
    assert len(fusion_steps) == 2 * 3 and all(boxes is not None for _, boxes in fusion_steps)
    # AttentionNet ran on the 24 training faces once (two evaluation batches), then only on the
    # 8 validation faces after each of the 2 epochs, to calibrate the ±, and for the validation
    # and test metrics: never in the 6 steps
    assert calls == [16, 8] + [8] * (2 + 3)
    # each step's boxes: the stored faces' boxes, moved as the face was (found on the face by pixels)
    model = load_model(once.checkpoint).eval()
    stored = torch.from_numpy(np.array(data.images[SPLIT["train"]])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        found = torch.cat([model.attend(stored[:16])[1], model.attend(stored[16:])[1]])
    draws = [(j, top, left, flip, side) for j in range(len(SPLIT["train"])) for side in range(int(16 * crop_scale), 17)
             for top in range(21 - side) for left in range(21 - side) for flip in (0, 1)]
    candidates = torch.stack([_augmented(stored[j], top, left, flip, side) for j, top, left, flip, side in draws])
    used_sides = set()
    for images, boxes in fusion_steps:
        for image, face_boxes in zip(images, boxes):
            same = (candidates == image).flatten(1).all(1).nonzero().flatten().tolist()
            matches = [draws[k] for k in same
                       if torch.equal(face_boxes, move_boxes(found[draws[k][0]][None], torch.tensor([draws[k][1:]]),
                                                             2, 16)[0])]
            assert matches, face_boxes
            used_sides.add(matches[0][-1])
    assert (min(used_sides) < 16) == (crop_scale < 1)  # smaller windows were drawn, and only then


def nn_call(module, x):
    return torch.nn.Module.__call__(module, x)


def _augmented(face, top, left, flip, side=16):
    from adpf.data.prepared import pad_crop_flip
    return pad_crop_flip(face, None, 2, torch.tensor([top, left, flip, side]))[0]


def test_qk_init_draws_stage_one_queries_and_keys_and_nothing_else(data, cache, monkeypatch):
    """recipe.qk_init="unit_logits": stage 1 starts its queries and keys from N(0, 2 / c_in) with zero
    biases (every other weight as PyTorch draws it); "pytorch" leaves the default draw untouched."""
    from adpf import train as train_module
    started = {}
    build = train_module.build_stage_model

    def keep_start(stage, previous, process, recipe):
        model = build(stage, previous, process, recipe)
        started[(recipe.qk_init, stage.name)] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    monkeypatch.setattr(train_module, "build_stage_model", keep_start)
    for init in ("pytorch", "unit_logits"):
        run(tiny(), data, RECIPE.replace(attention_epochs=1, fusion_epochs=1, qk_init=init))
    default, unit = started[("pytorch", "attention")], started[("unit_logits", "attention")]
    qk = [k for k in default if ".self_attention.query." in k or ".self_attention.key." in k]
    assert len(qk) == 4 * TINY["heads"]
    for name in qk:
        if name.endswith("bias"):
            assert unit[name].abs().max() == 0 and default[name].abs().max() > 0
    weights = [k for k in qk if k.endswith("weight")]
    pooled = {init: torch.cat([state[k].flatten() for k in weights]) for init, state in (("d", default), ("u", unit))}
    c_in = TINY["x_channels"] // TINY["heads"]
    assert pooled["d"].abs().max() <= c_in ** -0.5  # PyTorch's uniform bound 1/√c_in: std 0.41 here
    assert 0.7 < pooled["u"].std() < 1.3  # N(0, 2 / c_in): std 1
    assert all(torch.equal(default[k], unit[k]) for k in default if k not in qk)
    with pytest.raises(ValueError, match="qk_init must be"):
        RECIPE.replace(qk_init="xavier")


@pytest.mark.parametrize("boxes", ["every_step", "once"])
def test_rank_median_placement_crops_every_face_at_the_training_faces_median_boxes(data, cache, boxes):
    """patch_placement="rank_median": stage 1 is the paper's ADPF's own (one key); before stage 2
    the frozen AttentionNet finds the boxes of the 24 training faces as stored, and the model
    keeps each rank's median of them, which the checkpoint holds and every face is cropped at."""
    from adpf.patches import rank_median_boxes

    recipe = RECIPE.replace(fusion_boxes=boxes)
    per_face, _ = run(tiny(), data, recipe)
    placed, trained = run(tiny(patch_placement="rank_median"), data, recipe)
    assert trained == [("fusion", 1), ("fusion", 2)]
    assert placed.stage_keys["attention"] == per_face.stage_keys["attention"]
    assert placed.stage_keys["fusion"] != per_face.stage_keys["fusion"]
    model = load_model(placed.checkpoint).eval()
    stored = torch.from_numpy(np.array(data.images[SPLIT["train"]])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        found = model.face_boxes(stored)[1]
        test = model(torch.from_numpy(np.array(data.images[SPLIT["test"]])).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(model.placed_boxes, rank_median_boxes(found, 16))
    assert torch.equal(test.boxes, model.placed_boxes.expand(len(SPLIT["test"]), -1, -1))
    again, trained = run(tiny(patch_placement="rank_median"), data, recipe)  # from the cache
    assert trained == [] and again.metrics == placed.metrics


def test_box_jitter_moves_each_steps_boxes_within_its_fraction_and_only_when_asked(data, cache, monkeypatch):
    """recipe.box_jitter (open choice 22): each stage-2 step crops the stored boxes moved with the
    face, then shifted by at most the fraction of their side, drawn anew each step and the same
    on a second run; 0 leaves them as moved; it needs the boxes found once."""
    import adpf.train as train_module
    with pytest.raises(ValueError, match="needs fusion_boxes='once'"):
        RECIPE.replace(box_jitter=0.2)
    with pytest.raises(ValueError, match="box_jitter must be in"):
        RECIPE.replace(fusion_boxes="once", box_jitter=0.6)
    seen = {}
    original_step = train_module.train_step
    original_moved = train_module.StoredBoxes.moved

    def recording_step(stage, step, forward, images, age, *args):
        if stage.name == "fusion":
            seen.setdefault(current[0], []).append(args[-1].clone())
        return original_step(stage, step, forward, images, age, *args)

    def recording_moved(self, batch, epoch=0, step=0):
        unjittered.setdefault(current[0], []).append(original_moved(dataclasses_replace(self, jitter=0.0), batch))
        return original_moved(self, batch, epoch, step)

    from dataclasses import replace as dataclasses_replace
    unjittered = {}
    monkeypatch.setattr(train_module, "train_step", recording_step)
    monkeypatch.setattr(train_module.StoredBoxes, "moved", recording_moved)
    for current in (["none"], ["jitter"], ["again"]):
        jitter = 0.0 if current[0] == "none" else 0.5
        train(tiny(), data, SPLIT, RECIPE.replace(fusion_boxes="once", box_jitter=jitter), use_cache=False,
              progress=False)
    assert all(torch.equal(a, b) for a, b in zip(seen["none"], unjittered["none"]))
    assert all(torch.equal(a, b) for a, b in zip(seen["jitter"], seen["again"]))
    assert torch.equal(torch.cat(unjittered["jitter"]), torch.cat(unjittered["none"]))  # same faces, same moves
    got, moved = torch.cat(seen["jitter"]), torch.cat(unjittered["jitter"])
    side = (moved[..., 2] - moved[..., 0])[..., None]
    assert torch.equal(got[..., 2:] - got[..., :2], moved[..., 2:] - moved[..., :2])  # sides kept
    assert ((got - moved).abs() <= 0.5 * side + 0.5).all()
    assert (got != moved).any(-1).double().mean() > 0.5
