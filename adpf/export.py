"""Export a trained network for use without this library: TorchScript or ONNX, faces in, ages out.

The exported graph takes ``images`` ``(B, 3, S, S)`` float32 in [0, 1] (S = ``config.image_size``,
any B) and returns ``age`` ``(B,)`` (E, Eq. 10) and ``std`` ``(B,)`` (the std of the predicted age
distribution, Eq. 9), read as ``losses.predict_age`` reads them, but without its check for
non-finite outputs (a graph cannot raise: a NaN input gives a NaN age).

ADPF finds its patch boxes from the data (threshold, the connected region holding the peak, a
square box: ``adpf.patches``), all as tensor operations with a number of rounds fixed by the image
size, so one trace (TorchScript) or one ``torch.export`` (ONNX) records the whole network, boxes
included. Two operations get their own ONNX translation (`ONNX_TRANSLATIONS`): the stable sort
that ranks the heads by a_k (ONNX ``TopK``, which breaks ties by the lower index, as a stable
sort does) and ``einsum`` whose operands have different ranks under "..." (unsqueezed to the same
rank first, which ONNX Runtime needs). `export` writes the file only after `compare` has run it
beside the PyTorch model on real faces and found the same ages (within `TOLERANCE` years).
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from adpf.checkpoint import TEMPORARY_TAG, new_file_mode
from adpf.losses import NonFiniteOutputError, age_classes, age_distribution, age_std, expected_age

Format = Literal["torchscript", "onnx"]
FORMATS = ("torchscript", "onnx")

#: The largest difference in years (age and std) between an export and the PyTorch model that
#: `export` accepts. Float32 arithmetic in another order differs by about 1e-4 years, but ADPF's
#: patch boxes come from thresholding the attention maps (``adpf.patches``): where an attention
#: value lies within rounding of the threshold, the export's box can differ from PyTorch's by one
#: pixel, and the age by a hundredth of a year or so (0.0143 on a model of real faces). A
#: twentieth of a year (18 days) is far below any age error that matters and far above rounding.
TOLERANCE = 0.05


class AgeModel(nn.Module):
    """``model`` followed by the reading of its age distribution: images ``(B, 3, S, S)`` →
    (age ``(B,)``, std ``(B,)``) (Eq. 9–10)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        probs = age_distribution(self.model(images).logits.float(), self.config.eq9)
        ages = age_classes(self.config, probs)
        return expected_age(probs, ages), self.config.std_scale * age_std(probs, ages)


def _onnx_sort_stable(self, stable: bool = False, dim: int = -1, descending: bool = False):
    from onnxscript import opset18 as op

    k = op.Reshape(op.Gather(op.Shape(self), dim), op.Constant(value_ints=[1]))
    return op.TopK(self, k, axis=dim, largest=descending, sorted=True)


def _onnx_einsum(equation: str, tensors, path=None):
    from onnxscript import opset18 as op

    terms = equation.replace(" ", "").split("->")[0].split(",")
    ellipsis = [len(t.shape) - len(term.replace("...", "")) if "..." in term else 0
                for t, term in zip(tensors, terms)]
    operands = []
    for t, term, rank in zip(tensors, terms, ellipsis):
        if "..." in term and rank < max(ellipsis):
            at = term.index("...")
            t = op.Unsqueeze(t, op.Constant(value_ints=list(range(at, at + max(ellipsis) - rank))))
        operands.append(t)
    return op.Einsum(*operands, equation=equation)


def _onnx_median_dim(self, dim: int, keepdim: bool = False):
    """``torch.median(x, dim)``: the lower of the two middle values (its index too), by TopK of the
    ⌊(n − 1) / 2⌋ + 1 smallest; the box rule's median baseline (``patches``) needs it."""
    from onnxscript import opset18 as op

    one = op.Constant(value_ints=[1])
    n = op.Reshape(op.Gather(op.Shape(self), dim), one)
    k = op.Add(op.Div(op.Sub(n, one), op.Constant(value_ints=[2])), one)
    values, indices = op.TopK(self, k, axis=dim, largest=False, sorted=True)
    last = op.Sub(k, one)
    values, indices = op.Gather(values, last, axis=dim), op.Gather(indices, last, axis=dim)
    if keepdim:
        return values, indices
    axis = op.Constant(value_ints=[dim])
    return op.Squeeze(values, axis), op.Squeeze(indices, axis)


#: The ATen operations translated to ONNX here (see the module docstring).
ONNX_TRANSLATIONS = {torch.ops.aten.sort.stable: _onnx_sort_stable, torch.ops.aten.einsum.default: _onnx_einsum,
                     torch.ops.aten.median.dim: _onnx_median_dim}


def _write_torchscript(model: AgeModel, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # the networks' shape checks become constants: they are
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # checks of S and C, fixed here
        traced = torch.jit.trace(model, (example,), check_trace=False)
    torch.jit.save(traced, str(path))


def _write_onnx(model: AgeModel, example: Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise RuntimeError("ONNX export needs the packages onnx and onnxscript "
                           "(pip install 'adpf[export]')") from None
    batch = torch.export.Dim("batch", min=1)
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not
    level = registry.level  # installed. Skipping torchvision::nms": adpf uses no torchvision operation
    registry.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                        output_names=["age", "std"], dynamic_shapes={"images": {0: batch}},
                                        custom_translation_table=ONNX_TRANSLATIONS, optimize=False, verbose=False)
        finally:
            registry.setLevel(level)
    program.save(str(path))


def run_exported(path: str | Path, fmt: Format, images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Ages and stds ``(B,)`` of an exported file on ``images`` ``(B, 3, S, S)`` in [0, 1]
    (TorchScript with ``torch.jit.load``, ONNX with ONNX Runtime on the CPU)."""
    images = images.detach().float().cpu()
    if fmt == "torchscript":
        with torch.no_grad():
            age, std = torch.jit.load(str(path), map_location="cpu")(images)
        return age.numpy(), std.numpy()
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError("running an ONNX export needs onnxruntime (pip install 'adpf[export]')") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    age, std = session.run(["age", "std"], {"images": images.numpy()})
    return age, std


def compare(model: nn.Module, path: str | Path, fmt: Format, images: Tensor) -> float:
    """The largest difference in years between the exported file and ``model`` (PyTorch, on the
    CPU) over the ages and stds of ``images`` ``(B, 3, S, S)``."""
    with torch.no_grad():
        age, std = AgeModel(model).eval()(images.float().cpu())
    if not (torch.isfinite(age).all() and torch.isfinite(std).all()):
        raise NonFiniteOutputError("the model's output is not finite (NaN or inf) for the check faces: its weights "
                                   "are not finite; nothing to export")
    got_age, got_std = run_exported(path, fmt, images)
    return float(max(np.abs(got_age - age.numpy()).max(), np.abs(got_std - std.numpy()).max()))


def export(model: nn.Module, path: str | Path, fmt: Format, faces: Tensor) -> float:
    """Write ``model`` (any variant, on the CPU in eval mode) to ``path`` as ``fmt`` and check it.

    ``faces`` ``(B, 3, S, S)`` in [0, 1], B ≥ 2: the export is traced on the first two and
    compared with ``model`` on all of them (`compare`). The file is written to a temporary name
    and moved to ``path`` only when the ages agree within `TOLERANCE`; else ValueError
    (`NonFiniteOutputError` when ``model`` itself gives no finite age).
    Returns the largest difference in years.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if faces.dim() != 4 or len(faces) < 2:
        raise ValueError(f"need at least 2 faces (B, 3, S, S) to export and check on, got {tuple(faces.shape)}")
    model = model.cpu().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY_TAG}{os.getpid()}-", dir=path.parent)
    os.fchmod(fd, new_file_mode(path))  # as any other output (mkstemp makes 0600)
    os.close(fd)
    try:
        writer = _write_torchscript if fmt == "torchscript" else _write_onnx
        writer(AgeModel(model).eval(), faces[:2].float().cpu(), Path(tmp))
        difference = compare(model, tmp, fmt, faces)
        if not difference <= TOLERANCE:
            raise ValueError(f"the {fmt} export gives ages up to {difference:.3g} years away from the PyTorch "
                             f"model's (more than {TOLERANCE}); nothing written")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return difference
