"""DLK and DLKBlock (D-Net, Yang et al., arXiv 2403.10674; docs/explanation/maths.md section 3)."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from support.blocks import CONVS, SIZES, check_bad_inputs, check_reference, check_refused, randomise, saved_per_sample
from torch import nn

from nnunet_tubeconv.blocks import DLK, DLKBlock
from nnunet_tubeconv.vocabulary import DLK_MODES


def _conv(x: torch.Tensor):
    return F.conv2d if x.ndim == 4 else F.conv3d


def _sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-t))


def _gap(t: torch.Tensor) -> torch.Tensor:
    """Mean over every spatial axis, written as sum over a flattened view: (B, C, *S) -> (B, C, 1, ...)."""
    flat = t.reshape(t.shape[0], t.shape[1], -1)
    return (flat.sum(-1) / flat.shape[-1]).reshape(t.shape[0], t.shape[1], *([1] * (t.ndim - 2)))


def reference_dlk(m: DLK, x: torch.Tensor, mode: str) -> torch.Tensor:
    """docs/explanation/maths.md section 3 steps 1-6, from the block's weights, with explicit kernel geometry."""
    conv = _conv(x)
    c = x.shape[1]
    h = c // 2
    u = conv(x, m.reduce.weight, m.reduce.bias)  # 1x1, C -> C/2
    assert m.reduce.weight.shape[:2] == (h, c)
    a1 = conv(u, m.dw_small.weight, m.dw_small.bias, padding=2, groups=h)
    assert m.dw_small.weight.shape[1:] == (1,) + (5,) * (x.ndim - 2)
    a2 = conv(a1, m.dw_large.weight, m.dw_large.bias, padding=9, dilation=3, groups=h)
    assert m.dw_large.weight.shape[1:] == (1,) + (7,) * (x.ndim - 2)
    a = torch.cat([a1, a2], 1)
    mean_c = a.sum(1, keepdim=True) / c
    max_c = a[:, :1]
    for k in range(1, c):
        max_c = torch.maximum(max_c, a[:, k:k + 1])
    w = _sigmoid(conv(torch.cat([mean_c, max_c], 1), m.spatial_select.weight, m.spatial_select.bias, padding=3))
    if mode == "paper":
        a_sel = torch.cat([a1 * w[:, 0:1], a2 * w[:, 1:2]], 1)
    else:
        a_sel = a * (w[:, 0:1] + w[:, 1:2])
    gate = _sigmoid(conv(_gap(a_sel), m.channel_gate.weight, m.channel_gate.bias))
    return a_sel * gate + x


def reference_layer_norm(x: torch.Tensor, norm, eps: float = 1e-6) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu = x.sum(1, keepdim=True) / x.shape[1]
    var = ((x - mu) ** 2).sum(1, keepdim=True) / x.shape[1]
    return (x - mu) / torch.sqrt(var + eps) * norm.weight.view(shape) + norm.bias.view(shape)


def reference_block(m: DLKBlock, x: torch.Tensor, mode: str) -> torch.Tensor:
    conv = _conv(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = reference_layer_norm(x, m.norm1)
    t = F.gelu(conv(y, m.proj_in.weight, m.proj_in.bias))
    t = conv(reference_dlk(m.dlk, t, mode), m.proj_out.weight, m.proj_out.bias) + y
    x = x + m.gamma1.view(shape) * t
    y = reference_layer_norm(x, m.norm2)
    t = conv(y, m.fc1.weight, m.fc1.bias)
    t = F.gelu(conv(t, m.dwconv.weight, m.dwconv.bias, padding=1, groups=t.shape[1]))
    assert m.dwconv.weight.shape[1:] == (1,) + (3,) * (x.ndim - 2)
    t = conv(t, m.fc2.weight, m.fc2.bias)
    return x + m.gamma2.view(shape) * t


def _randomise(m: nn.Module) -> None:
    randomise(m, seed=3, std=0.3)


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("mode", DLK_MODES)
@pytest.mark.parametrize(("make", "channels", "reference", "tol"), [
    pytest.param(lambda conv_op, mode: DLK(conv_op, 6, mode=mode), 6, reference_dlk, 1e-10, id="dlk"),
    pytest.param(lambda conv_op, mode: DLKBlock(conv_op, 4, mlp_ratio=2, dlk_mode=mode), 4, reference_block, 1e-9,
                 id="block"),
])
def test_matches_reference(conv_op, mode, make, channels, reference, tol):
    torch.manual_seed(0)
    m = make(conv_op, mode).double()
    _randomise(m)
    x = torch.randn(2, channels, *SIZES[conv_op], dtype=torch.float64)
    check_reference(m, partial(reference, mode=mode), x, tol=tol)


@pytest.mark.parametrize("conv_op", CONVS)
def test_dlk_modes_differ_and_are_recorded(conv_op):
    torch.manual_seed(0)
    paper = DLK(conv_op, 4)
    authors = DLK(conv_op, 4, mode="authors2025")
    authors.load_state_dict(paper.state_dict())  # same parameters: only the selection differs
    assert paper.mode == "paper" and authors.mode == "authors2025"
    assert "mode='paper'" in repr(paper) and "mode='authors2025'" in repr(authors)
    x = torch.randn(1, 4, *SIZES[conv_op])
    assert not torch.allclose(paper(x), authors(x))
    block = DLKBlock(conv_op, 4, dlk_mode="authors2025")
    assert block.dlk.mode == "authors2025" and "dlk_mode='authors2025'" in repr(block)


@pytest.mark.parametrize("conv_op", CONVS)
def test_dlk_block_starts_near_identity(conv_op):
    torch.manual_seed(0)
    m = DLKBlock(conv_op, 4)
    assert torch.all(m.gamma1 == 1e-6) and torch.all(m.gamma2 == 1e-6)
    x = torch.randn(2, 4, *SIZES[conv_op])
    diff = (m(x) - x).abs().max().item()
    assert 0 < diff < 1e-3


@pytest.mark.parametrize("conv_op", CONVS)
def test_dlk_block_drop_path(conv_op):
    """Training: each sample keeps or drops each residual branch (kept ones scaled 1/(1-p)); eval: no dropping."""
    torch.manual_seed(0)
    p = 0.5
    m = DLKBlock(conv_op, 4, drop_path=p, layer_scale_init_value=0.5)
    x = torch.randn(24, 4, *SIZES[conv_op])
    m.train()
    out = m(x)
    m.eval()
    with torch.no_grad():
        candidates = {}
        g1, g2 = m.gamma1.clone(), m.gamma2.clone()
        for k1 in (0, 1):
            for k2 in (0, 1):
                m.gamma1.copy_(g1 * k1 / (1 - p))
                m.gamma2.copy_(g2 * k2 / (1 - p))
                candidates[(k1, k2)] = m(x)
        m.gamma1.copy_(g1)
        m.gamma2.copy_(g2)
        seen = set()
        for i in range(x.shape[0]):
            match = [k for k, c in candidates.items() if torch.allclose(out[i], c[i], atol=1e-5, rtol=1e-5)]
            assert len(match) == 1, f"sample {i} matches {match}"
            seen.add(match[0])
        assert len(seen) >= 3  # 24 samples: all four patterns are likely, three are virtually certain
        assert torch.equal(m(x), m(x))  # eval mode is deterministic


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("make", [
    pytest.param(lambda c: DLK(c, 6), id="dlk-paper"),
    pytest.param(lambda c: DLK(c, 6, mode="authors2025"), id="dlk-authors2025"),
    pytest.param(lambda c: DLKBlock(c, 6, layer_scale_init_value=0.3), id="block"),
])
def test_every_parameter_gets_a_gradient(conv_op, make):
    torch.manual_seed(0)
    m = make(conv_op)
    x = torch.randn(2, 6, *SIZES[conv_op], requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("make", [
    pytest.param(lambda c: DLK(c, 4), id="dlk"),
    pytest.param(lambda c: DLK(c, 4, mode="authors2025"), id="dlk-authors2025"),
    pytest.param(lambda c: DLKBlock(c, 4, layer_scale_init_value=0.5), id="block"),
])
def test_batch_elements_are_independent(conv_op, training, make):
    torch.manual_seed(0)
    m = make(conv_op).train(training)
    x = torch.randn(3, 4, *SIZES[conv_op])
    x[1] *= 5  # very different statistics per sample: any batch coupling would show
    out = m(x)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], m(x[i:i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("make", [
    pytest.param(lambda c: DLK(c, 8), id="dlk-paper"),
    pytest.param(lambda c: DLK(c, 8, mode="authors2025"), id="dlk-authors2025"),
    pytest.param(lambda c: DLKBlock(c, 8), id="block"),
    pytest.param(lambda c: DLKBlock(c, 8, mlp_ratio=2, drop_path=0.2, dlk_mode="authors2025"), id="block-dp"),
])
def test_feature_map_size_matches_saved_tensors(conv_op, make):
    torch.manual_seed(0)
    m = make(conv_op).train()
    size = SIZES[conv_op]
    measured = saved_per_sample(m, torch.randn(2, 8, *size, requires_grad=True))
    estimate = m.compute_conv_feature_map_size(size)
    assert isinstance(estimate, int)
    # measured: exact, except the block with drop path (within 0.024%)
    assert abs(estimate - measured) <= 0.001 * measured, (estimate, measured)


@pytest.mark.parametrize("cls", [DLK, DLKBlock])
def test_odd_channels_rejected(cls):
    with pytest.raises(ValueError, match="even number of channels"):
        cls(nn.Conv3d, 7)


@pytest.mark.parametrize("kwargs, match", [
    ({"conv_op": nn.Conv1d, "channels": 4}, "conv_op"),
    ({"conv_op": nn.Linear, "channels": 4}, "conv_op"),
    ({"conv_op": "torch.nn.Conv3d", "channels": 4}, "conv_op"),
    ({"conv_op": nn.Conv3d, "channels": 0}, "channels"),
    ({"conv_op": nn.Conv3d, "channels": 4.0}, "channels"),
    ({"conv_op": nn.Conv3d, "channels": 4, "mode": "max"}, "mode"),
])
def test_dlk_bad_arguments(kwargs, match):
    check_refused(DLK, kwargs, match)


@pytest.mark.parametrize("kwargs, match", [
    ({"conv_op": nn.Conv1d, "channels": 4}, "conv_op"),
    ({"conv_op": nn.Conv2d, "channels": -2}, "channels"),
    ({"conv_op": nn.Conv2d, "channels": 4, "mlp_ratio": 0}, "mlp_ratio"),
    ({"conv_op": nn.Conv2d, "channels": 4, "mlp_ratio": math.inf}, "mlp_ratio"),
    ({"conv_op": nn.Conv2d, "channels": 4, "drop_path": 1.0}, "drop_path"),
    ({"conv_op": nn.Conv2d, "channels": 4, "drop_path": -0.1}, "drop_path"),
    ({"conv_op": nn.Conv2d, "channels": 4, "layer_scale_init_value": 0.0}, "layer_scale_init_value"),
    ({"conv_op": nn.Conv2d, "channels": 4, "dlk_mode": "Paper"}, "mode"),
])
def test_dlk_block_bad_arguments(kwargs, match):
    check_refused(DLKBlock, kwargs, match)


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("cls", [DLK, DLKBlock])
def test_wrong_input_rejected(conv_op, cls):
    m = cls(conv_op, 4)
    size = SIZES[conv_op]
    check_bad_inputs(m, size, wrong_channels=6, bad_input_size=(8,) * (len(size) + 1))
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(4, *size))  # no batch axis


@pytest.mark.parametrize("conv_op", CONVS)
@pytest.mark.parametrize("cls", [DLK, DLKBlock])
def test_layout_in_is_layout_out_and_values_do_not_depend_on_it(conv_op, cls):
    """The blocks switch to channels-last internally on CPU (speed); the caller's layout must come back unchanged."""
    torch.manual_seed(0)
    m = cls(conv_op, 4)
    if cls is DLKBlock:
        _randomise(m)
    x = torch.randn(2, 4, *SIZES[conv_op])
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    out = m(x)
    out_cl = m(x.contiguous(memory_format=fmt))
    assert out.is_contiguous()
    assert out_cl.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-5)
