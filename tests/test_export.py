"""Export to TorchScript and ONNX: the exported file gives the PyTorch model's ages and stds on faces,
at batch sizes other than the traced one, with ADPF's data-dependent boxes inside the graph; and
``adpf export`` end to end in a subprocess. ONNX needs the export extra (onnx, onnxscript,
onnxruntime), which ``make test`` installs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adpf import export as export_module
from adpf.checkpoint import load_model
from adpf.config import get_preset
from adpf.data.prepared import write_prepared
from adpf.export import AgeModel, compare, export, run_exported
from adpf.losses import predict_age
from adpf.networks import build_model
from adpf.patches import crop_patches

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=16, x_size=4, stem_channels=(4, 4, 4), x_channels=6, heads=3, key_channels=4,
            value_channels=4, ca_reduction=2, fusion_channels=(4, 6, 8), patch_size=8, patch_channels=3, age_max=9)
TINY_ARGS = [a for k, v in TINY.items()
             for a in ("--set", f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", ""))]


def tiny_model(variant="adpf", seed=0, **changes):
    torch.manual_seed(seed)
    model = build_model(get_preset("cpu", **TINY, variant=variant, **changes))
    if variant in ("adpf", "attention_only"):  # distinct scales of both signs: a real ranking to export
        net = getattr(model, "attention_net", model)
        net.rmhha.scales.data = torch.tensor([0.4, -1.2, 0.9])
    for name, p in model.named_parameters():  # sharpen the age outputs: an untrained network answers
        if name.endswith("fc.weight"):           # about the same age for every face
            p.data *= 1000
    if hasattr(model, "freeze_attention"):
        model.freeze_attention()
    return model.eval()


def faces(n, seed=1):
    """Smooth random pictures (blobs): attention maps with distinct peaks, so boxes differ by face."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * torch.rand(n, 1, 1, 1, generator=g) * 2
    return torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)


def ages_with_frozen_boxes(model, x):
    """What a trace that baked in the first face's boxes would answer for every face."""
    with torch.no_grad():
        boxes = model(x[:1]).boxes.expand(len(x), -1, -1)
        logits = model.fusion_net(x, crop_patches(x, boxes, model.config.patch_size)).logits
    return predict_age(logits, model.config)[0]


@pytest.mark.parametrize("variant", ["adpf", "attention_only", "plain_cnn", "fixed_patches"])
def test_torchscript_gives_the_same_ages(variant, tmp_path):
    model = tiny_model(variant)
    x = faces(7)
    difference = export(model, tmp_path / "m.pt", "torchscript", x[:3])
    assert difference <= 1e-4
    with torch.no_grad():
        age, std = AgeModel(model)(x)
    got_age, got_std = run_exported(tmp_path / "m.pt", "torchscript", x)  # 7 faces, traced on 2
    assert np.abs(got_age - age.numpy()).max() < 1e-4 and np.abs(got_std - std.numpy()).max() < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left


def test_the_check_is_sensitive_to_the_boxes():
    """The faces give different boxes, and ages from frozen boxes differ: equal ages mean the
    export finds each face's own boxes."""
    model, x = tiny_model(), faces(7)
    with torch.no_grad():
        boxes = model(x).boxes
        age, _ = AgeModel(model)(x)
    assert len({tuple(b.flatten().tolist()) for b in boxes}) > 3
    assert (ages_with_frozen_boxes(model, x) - age).abs().max() > 1e-2


def test_onnx_gives_the_same_ages(tmp_path, capfd):
    model, x = tiny_model(), faces(7)
    difference = export(model, tmp_path / "m.onnx", "onnx", x[:3])
    assert difference <= 1e-3
    assert "torchvision" not in capfd.readouterr().err  # once: four "Skipping torchvision::nms" lines
    with torch.no_grad():
        age, std = AgeModel(model)(x)
    for batch in (x[:1], x):  # other batch sizes than the traced 2
        got_age, got_std = run_exported(tmp_path / "m.onnx", "onnx", batch)
        assert np.abs(got_age - age[: len(batch)].numpy()).max() < 1e-3
        assert np.abs(got_std - std[: len(batch)].numpy()).max() < 1e-3


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "compare", lambda *a: 0.5)
    with pytest.raises(ValueError, match="0.5 years away"):
        export(tiny_model(), tmp_path / "m.pt", "torchscript", faces(3))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="at least 2 faces"):
        export(tiny_model(), tmp_path / "m.pt", "torchscript", faces(1))


def test_adpf_export_command(tmp_path):
    rng = np.random.default_rng(0)
    images = (faces(40, seed=3).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    meta = pd.DataFrame({"age": rng.integers(0, 10, 40).astype(float), "subject": np.arange(40) // 2})
    data = write_prepared(tmp_path / "tiny", images, meta, name="tiny", info={"alignment": "resize"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "ADPF_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}

    def adpf(*args):
        return subprocess.run([sys.executable, "-m", "adpf.cli", *map(str, args)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, encoding="utf-8", timeout=900)

    train = adpf("train", *TINY_ARGS, "--data", data, "--recipe", "book", "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--out", tmp_path / "run")
    assert train.returncode == 0, train.stderr
    model = load_model(tmp_path / "run" / "model.pt")
    x = torch.from_numpy(images[:6]).permute(0, 3, 1, 2).float().div(255)
    for fmt in ("torchscript", "onnx"):
        out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
        done = adpf("export", tmp_path / "run", "--format", fmt, "--out", out, "--check", "5")
        assert done.returncode == 0, done.stderr
        assert f"checked on 5 faces of {data}" in done.stdout
        assert compare(model, out, fmt, x) < 1e-3
    refused = adpf("export", tmp_path / "run", "--format", "onnx", "--out", tmp_path, "--check", "5")
    assert refused.returncode == 2 and "is a folder" in refused.stderr


def test_the_tolerance_is_what_a_user_cares_about_and_stated_in_help(capsys):
    """0.01 years refused a UTKFace model whose ONNX ages were 0.0143 years off (a box a pixel away)."""
    from adpf.cli import main
    from adpf.export import TOLERANCE

    assert TOLERANCE == 0.05
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "within 0.05 years of the PyTorch model's" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("form", ["torchscript", "onnx"])
def test_placed_boxes_are_exported_with_the_model(form, tmp_path):
    """An ADPF that crops every face at its placed boxes (patch_placement="rank_median") exports
    them: the exported file answers as the model does, at another batch size than traced."""
    model, x = tiny_model(patch_placement="rank_median"), faces(7)
    with torch.no_grad():
        model.place_boxes(model.face_boxes(x)[1])
        age, _ = AgeModel(model)(x)
        elsewhere = model.fusion_net(x, crop_patches(x, model.face_boxes(x)[1], 8)).logits
    assert (predict_age(elsewhere, model.config)[0] - age).abs().max() > 1e-2  # the boxes matter
    path = tmp_path / ("m.pt" if form == "torchscript" else "m.onnx")
    assert export(model, path, form, x[:3]) <= 1e-3
    got_age, _ = run_exported(path, form, x)
    assert np.abs(got_age - age.numpy()).max() < 1e-3
