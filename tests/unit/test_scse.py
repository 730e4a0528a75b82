"""scSE (Roy et al., MICCAI 2018; docs/explanation/maths.md section 5).

Every test runs twice on CPU: with the compiled "add"-mode kernels (``cpu_kernels.c``, used for float32/float64 on
CPU) and with the plain PyTorch expression (the fallback, autocast, and the GPU path)."""

from functools import partial

import pytest
import torch
from support.blocks import CONVS, SIZES, check_bad_inputs, check_reference, check_refused, randomise, saved_per_sample
from torch import nn

from nnunet_tubeconv.blocks import SCSE

MODES = ["add", "max"]


# every test twice: the compiled CPU kernels, then the PyTorch implementation (conftest.py)
pytestmark = pytest.mark.usefixtures("implementation")


def _sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def reference_scse(m: SCSE, x: torch.Tensor, mode: str) -> torch.Tensor:
    """cSE and sSE written out with matrix products on the squeezed weights; pooling over all spatial axes."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)  # (B, C, n): every spatial axis
    gap = flat.sum(-1) / flat.shape[-1]  # (B, C)
    hidden = torch.clamp(gap @ m.squeeze.weight.reshape(m.bottleneck, c).T + m.squeeze.bias, min=0)
    z = _sigmoid(hidden @ m.excite.weight.reshape(c, m.bottleneck).T + m.excite.bias)  # (B, C)
    cse = flat * z[:, :, None]
    q = _sigmoid(torch.einsum("bcn,c->bn", flat, m.spatial.weight.reshape(c)) + m.spatial.bias)  # (B, n)
    sse = flat * q[:, None, :]
    out = cse + sse if mode == "add" else torch.where(cse >= sse, cse, sse)
    return out.reshape(x.shape)


def _randomise(m: nn.Module) -> None:
    randomise(m, seed=7)


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels, reduction", [(6, 2), (5, 16)])
def test_matches_reference(conv_op, mode, channels, reduction):
    torch.manual_seed(0)
    m = SCSE(conv_op, channels, reduction=reduction, mode=mode).double()
    _randomise(m)
    x = torch.randn(2, channels, *SIZES[conv_op], dtype=torch.float64)
    check_reference(m, partial(reference_scse, mode=mode), x, tol=1e-10)


def test_modes_differ_and_are_recorded():
    torch.manual_seed(0)
    add = SCSE(nn.Conv2d, 4)
    mx = SCSE(nn.Conv2d, 4, mode="max")
    mx.load_state_dict(add.state_dict())
    assert add.mode == "add" and "mode='max'" in repr(mx)
    x = torch.randn(1, 4, 6, 6)
    assert not torch.allclose(add(x), mx(x))


@pytest.mark.parametrize("channels, reduction, bottleneck", [(8, 2, 4), (8, 3, 2), (3, 16, 1), (1, 2, 1)])
def test_bottleneck_has_at_least_one_channel(channels, reduction, bottleneck):
    m = SCSE(nn.Conv3d, channels, reduction=reduction)
    assert m.bottleneck == bottleneck
    assert m.squeeze.weight.shape[:2] == (bottleneck, channels)
    assert m(torch.randn(1, channels, 3, 3, 3)).shape == (1, channels, 3, 3, 3)


@pytest.mark.parametrize("mode", MODES)
def test_3d_channel_squeeze_pools_the_whole_volume(mode):
    """Changing slice 0 must change the channel gate, hence the output, on every other slice too.

    A block that pools per slice (2D pooling applied to each slice of a volume) leaves slices 1.. unchanged.
    """
    torch.manual_seed(0)
    m = SCSE(nn.Conv3d, 4, mode=mode)
    _randomise(m)
    x = torch.randn(1, 4, 4, 5, 5)
    x2 = x.clone()
    x2[:, :, 0] += 3.0 * torch.randn(1, 4, 5, 5)
    y, y2 = m(x), m(x2)
    for d in range(1, 4):
        assert not torch.allclose(y[:, :, d], y2[:, :, d], atol=1e-4), f"slice {d} ignored slice 0"


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("mode", MODES)
def test_every_parameter_gets_a_gradient(conv_op, mode):
    torch.manual_seed(0)
    m = SCSE(conv_op, 4, mode=mode)
    _randomise(m)
    x = torch.randn(2, 4, *SIZES[conv_op], requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("conv_op", CONVS)
def test_add_mode_gradients_match_the_reference_and_gradcheck(conv_op, implementation):
    """On CPU "add" mode runs one autograd node with hand-written backward (_ScseAddFunction): its gradients equal
    those of the plain expression (reference_scse through autograd) and pass float64 gradcheck; the state dict keeps
    the 1x1-conv layout either way."""
    torch.manual_seed(0)
    m = SCSE(conv_op, 5, reduction=2).double()
    _randomise(m)
    x = torch.randn(2, 5, *SIZES[conv_op], dtype=torch.float64, requires_grad=True)
    g = torch.randn(x.shape, dtype=torch.float64)
    params = [x, *m.parameters()]
    fused = torch.autograd.grad(m(x), params, g)
    plain = torch.autograd.grad(reference_scse(m, x, "add"), params, g)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    small = torch.randn(1, 5, *[3] * (2 if conv_op is nn.Conv2d else 3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (small,))
    assert set(m.state_dict()) == {f"{n}.{p}" for n in ("squeeze", "excite", "spatial") for p in ("weight", "bias")}
    fused_node = type(m(x).grad_fn).__name__ == "_ScseAddFunctionBackward"
    assert fused_node == (implementation == "native")


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_batch_elements_are_independent(conv_op, mode, training):
    torch.manual_seed(0)
    m = SCSE(conv_op, 4, mode=mode).train(training)
    x = torch.randn(3, 4, *SIZES[conv_op])
    x[0] *= 10
    out = m(x)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], m(x[i:i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("mode", MODES)
def test_feature_map_size_matches_saved_tensors(conv_op, mode):
    torch.manual_seed(0)
    m = SCSE(conv_op, 8, mode=mode).train()
    size = SIZES[conv_op]
    measured = saved_per_sample(m, torch.randn(2, 8, *size, requires_grad=True))
    estimate = m.compute_conv_feature_map_size(size)
    assert estimate == measured  # the count is exact (measured: 0 elements apart, both paths, both modes)


@pytest.mark.parametrize("kwargs, match", [
    ({"conv_op": nn.Conv1d, "channels": 4}, "conv_op"),
    ({"conv_op": nn.ConvTranspose3d, "channels": 4}, "conv_op"),
    ({"conv_op": nn.Conv3d, "channels": 0}, "channels"),
    ({"conv_op": nn.Conv3d, "channels": 4, "reduction": 0}, "reduction"),
    ({"conv_op": nn.Conv3d, "channels": 4, "reduction": 1.5}, "reduction"),
    ({"conv_op": nn.Conv3d, "channels": 4, "mode": "mul"}, "mode"),
])
def test_bad_arguments(kwargs, match):
    check_refused(SCSE, kwargs, match)


@pytest.mark.parametrize("conv_op", CONVS)
def test_wrong_input_rejected(conv_op):
    size = SIZES[conv_op]
    check_bad_inputs(SCSE(conv_op, 4), size, wrong_channels=2, bad_input_size=(0,) * len(size))
