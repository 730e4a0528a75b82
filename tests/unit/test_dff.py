"""DFF, dynamic feature fusion (D-Net, Yang et al., arXiv 2403.10674; docs/explanation/maths.md section 4)."""

import pytest
import torch
import torch.nn.functional as F
from support.blocks import CONVS, SIZES, check_reference, check_refused, randomise, saved_per_sample
from torch import nn

from nnunet_tubeconv.blocks import DFF


def _sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def reference_dff(m: DFF, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """docs/explanation/maths.md section 4 written out: concatenate, channel gate, 1x1 reduction, spatial gate."""
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    c = x.shape[1]
    f = torch.cat([x, skip], 1)  # (B, 2C, *S)
    flat = f.reshape(f.shape[0], 2 * c, -1)
    gap = (flat.sum(-1) / flat.shape[-1]).reshape(f.shape[0], 2 * c, *([1] * (x.ndim - 2)))
    assert m.channel_attention.bias is None and m.reduce.bias is None
    f = f * _sigmoid(conv(gap, m.channel_attention.weight))
    f = conv(f, m.reduce.weight)  # 2C -> C
    assert m.reduce.weight.shape[:2] == (c, 2 * c)
    spatial = _sigmoid(conv(x, m.spatial_x.weight, m.spatial_x.bias) + conv(skip, m.spatial_skip.weight,
                                                                             m.spatial_skip.bias))
    assert spatial.shape[1] == 1
    return f * spatial


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("channels", [1, 5])
def test_matches_reference(conv_op, channels):
    torch.manual_seed(0)
    m = DFF(conv_op, channels).double()
    randomise(m, seed=5, std=0.4)
    x = torch.randn(3, channels, *SIZES[conv_op], dtype=torch.float64)
    skip = torch.randn(3, channels, *SIZES[conv_op], dtype=torch.float64)
    check_reference(m, reference_dff, x, skip, tol=1e-10)


@pytest.mark.parametrize("conv_op", CONVS)
def test_matches_reference_float32_non_contiguous(conv_op):
    """Inputs that are views (a channels-last copy, a channel slice) give the same result as contiguous ones."""
    torch.manual_seed(0)
    m = DFF(conv_op, 4)
    x = torch.randn(2, 4, *SIZES[conv_op])
    wide = torch.randn(2, 8, *SIZES[conv_op])
    skip = wide[:, 2:6]
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    out = m(x.to(memory_format=fmt), skip)
    torch.testing.assert_close(out, reference_dff(m, x, skip.contiguous()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv_op", CONVS)
def test_every_parameter_gets_a_gradient(conv_op):
    torch.manual_seed(0)
    m = DFF(conv_op, 4)
    x = torch.randn(2, 4, *SIZES[conv_op], requires_grad=True)
    skip = torch.randn(2, 4, *SIZES[conv_op], requires_grad=True)
    m(x, skip).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and skip.grad.abs().sum() > 0


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_batch_elements_are_independent(conv_op, training):
    torch.manual_seed(0)
    m = DFF(conv_op, 4).train(training)
    x = torch.randn(3, 4, *SIZES[conv_op])
    skip = torch.randn(3, 4, *SIZES[conv_op])
    x[2] *= 7
    out = m(x, skip)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], m(x[i:i + 1], skip[i:i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("channels", [3, 16])
def test_feature_map_size_matches_saved_tensors(conv_op, channels):
    torch.manual_seed(0)
    m = DFF(conv_op, channels).train()
    size = SIZES[conv_op]
    x = torch.randn(2, channels, *size, requires_grad=True)
    skip = torch.randn(2, channels, *size, requires_grad=True)
    measured = saved_per_sample(m, x, skip)
    estimate = m.compute_conv_feature_map_size(size)
    assert estimate == measured  # the count is exact (measured: 0 elements apart in 2D and 3D)


@pytest.mark.parametrize("kwargs, match", [
    ({"conv_op": nn.Conv1d, "channels": 4}, "conv_op"),
    ({"conv_op": "Conv2d", "channels": 4}, "conv_op"),
    ({"conv_op": nn.Conv2d, "channels": 0}, "channels"),
    ({"conv_op": nn.Conv2d, "channels": True}, "channels"),
])
def test_bad_arguments(kwargs, match):
    check_refused(DFF, kwargs, match)


@pytest.mark.parametrize("conv_op", CONVS)
def test_wrong_inputs_rejected(conv_op):
    m = DFF(conv_op, 4)
    size = SIZES[conv_op]
    x = torch.randn(2, 4, *size)
    with pytest.raises(ValueError, match="input channels"):
        m(x, torch.randn(2, 3, *size))
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(2, 8, *size), x)
    with pytest.raises(ValueError, match="same shape"):
        m(x, torch.randn(2, 4, *[s + 1 for s in size]))
    with pytest.raises(ValueError, match="same shape"):
        m(x, torch.randn(1, 4, *size))
    with pytest.raises(ValueError, match="shape"):
        m(x[:, :, 0], x[:, :, 0])
    with pytest.raises(ValueError, match="input_size"):
        m.compute_conv_feature_map_size(size[:-1])
