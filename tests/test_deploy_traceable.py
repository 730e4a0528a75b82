"""The export forward of DSConv (deploy/traceable.py) against the block's own forward, in eager mode and in ONNX.

The block computes its snake convolution in a custom autograd Function that the ONNX exporters cannot take with
dynamic sizes; the export forward re-expresses the same maths in traceable ops. These tests pin that the two agree
(random, large swings; every morph axis; 2D and 3D; restricted swing axes; sizes below the kernel length; a batch
of different images) and that the exported graph really takes other sizes than the traced one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_tubeconv.blocks.dsconv import DSConv
from nnunet_tubeconv.deploy.traceable import (
    cumulative_swing,
    exportable,
    replaced_modules,
    traceable_deform_conv,
    traceable_snake_conv,
)


def _dsconv(dim: int, axis: int, kernel_size: int = 5, swing_axes=None, seed: int = 0) -> DSConv:
    torch.manual_seed(seed)
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    m = DSConv(conv, 3, 4, kernel_size=kernel_size, axis=axis, extend_scope=1.5, norm_op=norm,
               norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, swing_axes=swing_axes)
    if m.swing_conv is not None:
        nn.init.normal_(m.swing_conv.weight, std=1.0)  # swings of several voxels: corners, clamping, borders
    return m.eval()


CONFIGS = [(2, 0, None), (2, 1, None), (3, 0, None), (3, 1, None), (3, 2, None), (3, 2, (1,)), (3, 0, ())]


@pytest.mark.parametrize(("dim", "axis", "swing_axes"), CONFIGS)
def test_export_forward_equals_block_forward(dim, axis, swing_axes):
    m = _dsconv(dim, axis, swing_axes=swing_axes)
    e = exportable(m)
    assert replaced_modules(m) == [""]
    for size in ([9, 7, 6][:dim], [3, 2, 4][:dim]):  # the second is smaller than the kernel along every axis
        x = torch.randn(3, 3, *size) * 2
        with torch.no_grad():
            ref, out = m(x), e(x)
        assert out.shape == ref.shape == (3, 4, *size)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_batch_elements_stay_apart():
    m = _dsconv(2, 0)
    e = exportable(m)
    x = torch.randn(3, 3, 8, 9)
    with torch.no_grad():
        together = e(x)
        alone = torch.cat([e(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_functional_form_matches_snake_conv_without_norm():
    from nnunet_tubeconv.blocks.dsconv import snake_conv

    torch.manual_seed(3)
    x = torch.randn(2, 3, 7, 6, 5)
    delta = torch.tanh(torch.randn(2, 2 * 6, 7, 6, 5) * 2)
    weight = torch.randn(4, 3, 7)
    bias = torch.randn(4)
    ref = snake_conv(x, delta, weight, bias, axis=1, swing_axes=(0, 2), extend_scope=2.0)
    out = traceable_snake_conv(x, delta, weight, bias, 1, (0, 2), 2.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_cumulative_swing_is_an_outward_cumsum():
    delta = torch.arange(1.0, 9.0).view(1, 8, 1, 1)  # 2 swing axes x (K - 1 = 4) points, K = 5
    cum = cumulative_swing(delta, 2, 5)[0, :, :, 0, 0]
    # axis 0: j = -2, -1 get delta 1, 2 -> Delta_-1 = 2, Delta_-2 = 2 + 1; j = +1, +2 get 3, 4 -> 3, 3 + 4
    assert cum.tolist() == [[3.0, 2.0, 0.0, 3.0, 7.0], [11.0, 6.0, 0.0, 7.0, 15.0]]


def test_original_block_is_not_modified():
    m = _dsconv(2, 1)
    forward = m.forward
    e = exportable(m)
    assert m.forward == forward and e.forward != forward
    assert e is not m and e.conv.weight is not m.conv.weight
    torch.testing.assert_close(e.conv.weight, m.conv.weight)


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


@pytest.mark.parametrize("dim", [2, 3])
def test_deform_export_forward_equals_block_forward(dim):
    from nnunet_tubeconv.blocks.deform import DeformConv

    torch.manual_seed(0)
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    kernel = [3, 3] if dim == 2 else [1, 3, 3]  # an anisotropic 3D stage as well
    m = DeformConv(conv, 3, 4, kernel_size=kernel, stride=[2] * dim, norm_op=norm, norm_op_kwargs={"affine": True},
                   nonlin=nn.LeakyReLU)
    nn.init.normal_(m.offset_conv.weight, std=1.0)  # offsets of several voxels, many samples outside the input
    m.eval()
    e = exportable(m)
    assert replaced_modules(m) == [""]
    for size in ([9, 8, 7][:dim], [4, 5, 3][:dim]):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(e(x), m(x), rtol=1e-4, atol=1e-5)


def test_deform_functional_form_matches_torchvision():
    from torchvision.ops import deform_conv2d

    torch.manual_seed(1)
    x = torch.randn(2, 3, 7, 6)
    offset = 3 * torch.randn(2, 2 * 9, 7, 6)
    mask = torch.rand(2, 9, 7, 6)
    weight, bias = torch.randn(4, 3, 3, 3), torch.randn(4)
    ref = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    torch.testing.assert_close(traceable_deform_conv(x, offset, mask, weight, bias, (1, 1), (1, 1)), ref,
                               rtol=1e-4, atol=1e-5)
