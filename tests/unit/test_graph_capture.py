"""Graph capture of the blocks (ONNX export, TorchScript, torch.compile) with no patching, against their eager forwards.

One rule, ``tracing()`` in ``nnunet_tubeconv/blocks/utils.py``: while a graph is exported (ONNX, TorchScript,
torch.export), DSConv, DeformConv, scSE and DLK leave their custom autograd Functions, compiled CPU kernels,
torchvision op and layout conversion for the same maths in plain tensor operations (``blocks/dsconv/traceable.py``,
``blocks/deform.py``'s ``traceable_deform_conv``). Under torch.compile (``compiling()``) DSConv and scSE call their
kernels as custom ops instead (test_compile.py). These tests pin that the captured graphs compute what the
eager forwards compute (random, large swings and offsets; every morph axis; 2D and 3D; restricted swing axes; sizes
below the kernel length; a batch of different images), that a graph traced at one size takes others, and that no
block carries its own copy of the rule.
"""

from __future__ import annotations

import importlib.util
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_tubeconv import blocks
from nnunet_tubeconv.blocks import SCSE, DeformConv, DLKBlock, DSConv
from nnunet_tubeconv.blocks.deform import traceable_deform_conv
from nnunet_tubeconv.blocks.dsconv import snake_conv
from nnunet_tubeconv.blocks.dsconv.maths import cumulative_swing
from nnunet_tubeconv.blocks.utils import compiling, tracing


def _trace(module: nn.Module, *example: torch.Tensor):
    return torch.jit.trace(module, example, check_trace=False)


def _dsconv(dim: int, axis: int, kernel_size: int = 5, swing_axes=None, seed: int = 0) -> DSConv:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    m = DSConv(conv, 3, 4, kernel_size=kernel_size, axis=axis, extend_scope=1.5, norm_op=norm,
               norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, swing_axes=swing_axes)
    if m.swing_conv is not None:
        nn.init.normal_(m.swing_conv.weight, std=1.0)  # swings of several voxels: corners, clamping, borders
    return m.eval()


class _Probe(nn.Module):
    """Records what the tracing rule says each time it runs."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((tracing(), compiling()))
        return x * 2


_EXPORT_SEEN: list[tuple[bool, bool]] = []


class _ExportProbe(nn.Module):
    def forward(self, x):
        _EXPORT_SEEN.append((tracing(), compiling()))
        return x * 2


def test_the_rule_is_false_in_eager_mode_and_true_in_every_export(tmp_path):
    """tracing() (plain maths) holds for TorchScript, torch.export and ONNX; under torch.compile compiling() holds
    instead (the blocks' custom ops, test_compile.py), never both."""
    probe = _Probe()
    probe(torch.ones(1))
    _trace(probe, torch.ones(1))
    torch.compile(probe, backend="eager", fullgraph=True)(torch.ones(2))
    assert probe.seen == [(False, False), (True, False), (False, True)]
    _EXPORT_SEEN.clear()  # torch.export runs forward on a copy of the module: record in a global
    torch.export.export(_ExportProbe(), (torch.ones(2),))
    assert _EXPORT_SEEN and all(seen == (True, False) for seen in _EXPORT_SEEN)
    pytest.importorskip("onnx")
    torch.onnx.export(probe, (torch.ones(1),), str(tmp_path / "probe.onnx"), dynamo=False)
    assert probe.seen[3:] and all(seen == (True, False) for seen in probe.seen[3:])


def test_no_block_module_has_its_own_capture_rule():
    """The capture checks live in utils.tracing / utils.compiling only; a block asking torch directly would drift from
    them. Every module of the package, the dsconv subpackage's included, read as source (nothing imported)."""
    own, seen = [], []
    for info in pkgutil.walk_packages(blocks.__path__, prefix="nnunet_tubeconv.blocks."):
        if info.name == "nnunet_tubeconv.blocks.utils":
            continue
        seen.append(info.name)
        source = Path(importlib.util.find_spec(info.name).origin).read_text()
        if any(s in source for s in ("is_in_onnx_export", "jit.is_tracing", "jit.is_scripting", "is_compiling")):
            own.append(info.name)
    assert "nnunet_tubeconv.blocks.dsconv.module" in seen and "nnunet_tubeconv.blocks.scse" in seen
    assert own == []


CONFIGS = [(2, 0, None), (2, 1, None), (3, 0, None), (3, 1, None), (3, 2, None), (3, 2, (1,)), (3, 0, ())]


@pytest.mark.parametrize(("dim", "axis", "swing_axes"), CONFIGS)
def test_traced_dsconv_equals_eager_at_other_sizes(dim, axis, swing_axes):
    m = _dsconv(dim, axis, swing_axes=swing_axes)
    traced = _trace(m, torch.randn(2, 3, *[8, 6, 7][:dim]))
    for size in ([9, 7, 6][:dim], [3, 2, 4][:dim]):  # the second is smaller than the kernel along every axis
        x = torch.randn(3, 3, *size) * 2
        with torch.no_grad():
            ref, out = m(x), traced(x)
        assert out.shape == ref.shape == (3, 4, *size)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_traced_batch_elements_stay_apart():
    traced = _trace(_dsconv(2, 0), torch.randn(3, 3, 8, 9))
    x = torch.randn(3, 3, 8, 9)
    with torch.no_grad():
        together = traced(x)
        alone = torch.cat([traced(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


class _SnakeConv(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x, delta):
        return snake_conv(x, delta, self.weight, self.bias, axis=1, swing_axes=(0, 2), extend_scope=2.0)


def test_functional_snake_conv_captures_too():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 7, 6, 5)
    delta = torch.tanh(torch.randn(2, 2 * 6, 7, 6, 5) * 2)
    f = _SnakeConv(torch.randn(4, 3, 7), torch.randn(4))
    torch.testing.assert_close(_trace(f, x, delta)(x, delta), f(x, delta), rtol=1e-5, atol=1e-5)


def test_cumulative_swing_is_an_outward_cumsum():
    delta = torch.arange(1.0, 9.0).view(1, 8, 1, 1)  # 2 swing axes x (K - 1 = 4) points, K = 5
    cum = cumulative_swing(delta, 2, 5)[0, :, :, 0, 0]
    # axis 0: j = -2, -1 get delta 1, 2 -> Delta_-1 = 2, Delta_-2 = 2 + 1; j = +1, +2 get 3, 4 -> 3, 3 + 4
    assert cum.tolist() == [[3.0, 2.0, 0.0, 3.0, 7.0], [11.0, 6.0, 0.0, 7.0, 15.0]]


@pytest.mark.parametrize("dim", [2, 3])
def test_onnx_of_the_block_takes_any_size(tmp_path, dim):
    pytest.importorskip("onnxruntime")
    from nnunet_tubeconv.deploy.onnx_export import export_network, max_relative_error, run_onnx

    m = _dsconv(dim, dim - 1, kernel_size=7)
    path = tmp_path / "dsconv.onnx"
    export_network(m, path, 3, [6] * dim)
    rng = np.random.default_rng(0)
    for size in ([6] * dim, [11, 4, 9][:dim], [2, 13, 3][:dim]):
        x = rng.standard_normal((2, 3, *size)).astype(np.float32)
        with torch.no_grad():
            ref = m(torch.from_numpy(x)).numpy()
        assert max_relative_error(ref, run_onnx(path, x)) <= 1e-5


class _MoveDim(nn.Module):
    def forward(self, x):
        return (x.movedim(1, -1) * 2.0).movedim(-1, 1)  # the exporter writes perm=[0, -1, 1, 2] for the latter


def test_negative_transpose_perms_are_fixed(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from nnunet_tubeconv.deploy.onnx_export import export_network, run_onnx

    path = tmp_path / "movedim.onnx"
    export_network(_MoveDim(), path, 2, [3, 4])
    perms = [list(a.ints) for n in onnx.load(str(path)).graph.node if n.op_type == "Transpose" for a in n.attribute]
    assert perms and all(min(p) >= 0 and sorted(p) == list(range(len(p))) for p in perms)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(path, x), 2 * x, rtol=1e-6)


def _deform(dim: int) -> DeformConv:
    torch.manual_seed(0)
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    kernel = [3, 3] if dim == 2 else [1, 3, 3]  # an anisotropic 3D stage as well
    m = DeformConv(conv, 3, 4, kernel_size=kernel, stride=[2] * dim, norm_op=norm, norm_op_kwargs={"affine": True},
                   nonlin=nn.LeakyReLU)
    nn.init.normal_(m.offset_conv.weight, std=1.0)  # offsets of several voxels, many samples outside the input
    return m.eval()


@pytest.mark.parametrize("dim", [2, 3])
def test_traced_deform_equals_eager_at_other_sizes(dim):
    m = _deform(dim)
    traced = _trace(m, torch.randn(2, 3, *[6, 7, 8][:dim]))
    for size in ([9, 8, 7][:dim], [4, 5, 3][:dim]):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), m(x), rtol=1e-4, atol=1e-5)


def test_deform_plain_form_matches_torchvision():
    from torchvision.ops import deform_conv2d

    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 6)
    offset = 3 * torch.randn(2, 2 * 9, 7, 6)
    mask = torch.rand(2, 9, 7, 6)
    weight, bias = torch.randn(4, 3, 3, 3), torch.randn(4)
    ref = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    torch.testing.assert_close(traceable_deform_conv(x, offset, mask, weight, bias, (1, 1), (1, 1)), ref,
                               rtol=1e-4, atol=1e-5)


BLOCKS = {
    "dsconv": (lambda: _dsconv(2, 1), (2, 3, 9, 7)),
    "deform": (lambda: _deform(2), (2, 3, 9, 8)),
    "scse": (lambda: SCSE(nn.Conv2d, 4).eval(), (2, 4, 8, 8)),
    "dlk": (lambda: DLKBlock(nn.Conv2d, 8).eval(), (2, 8, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_torch_compile_takes_each_block_in_one_graph(name):
    """fullgraph=True: a ctypes kernel dynamo had to trace into would fail the capture (the blocks call custom ops)."""
    make, shape = BLOCKS[name]
    torch.manual_seed(0)
    m, x = make(), torch.randn(*shape)
    compiled = torch.compile(m, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-5)
