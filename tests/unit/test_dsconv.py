"""DSConv (dynamic snake convolution, docs/explanation/maths.md section 1), 2D and 3D: invariants, a naive reference,
gradients.

Every test runs twice on CPU: with the compiled kernels (``cpu_kernels.c``) and with the PyTorch implementation
(the fallback, and the code that runs on GPU)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from support.blocks import check_refused, saved_per_sample
from torch import nn

from nnunet_tubeconv.blocks import DSConv
from nnunet_tubeconv.blocks.dsconv import maths, snake_conv

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
CASES = [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]  # (dim, axis)
# every test twice: the compiled CPU kernels, then the PyTorch implementation (conftest.py)
pytestmark = pytest.mark.usefixtures("implementation")


def perturb(m: DSConv, std: float = 0.5, seed: int = 0) -> DSConv:
    """Give the zero-initialised swing branch weights, so that the snake really bends."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.swing_conv.weight.copy_(torch.randn(m.swing_conv.weight.shape, generator=g) * std)
    return m


def replicate_axis_conv(x, weight, bias, axis, k):
    """The zero-swing reference of docs/explanation/maths.md: replicate padding of k // 2 along ``axis``, then a conv
    of kernel k there."""
    d = x.ndim - 2
    pad = [0] * (2 * d)
    pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = k // 2  # F.pad lists the last axis first
    return (F.conv2d if d == 2 else F.conv3d)(F.pad(x, pad, mode="replicate"), weight, bias)


def naive_snake(x, delta, weight, bias, axis, swing_axes, extend_scope):
    """Explicit loops over kernel points j; cumulative swing by a loop; interpolation from floor/ceil corners."""
    batch, _, *size = x.shape
    d = len(size)
    k = weight.shape[-1]
    c = k // 2
    n_sw = len(swing_axes)
    cum = torch.zeros(batch, n_sw, k, *size, dtype=torch.float64)
    if n_sw:
        raw = delta.double().view(batch, n_sw, k - 1, *size)  # channels per swing axis: j = -c..-1, +1..+c
        for s in range(n_sw):
            for j in range(1, c + 1):
                cum[:, s, c + j] = cum[:, s, c + j - 1] + raw[:, s, c + j - 1]
                cum[:, s, c - j] = cum[:, s, c - j + 1] + raw[:, s, c - j]
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in size], indexing="ij")
    out = torch.zeros(batch, weight.shape[0], *size, dtype=torch.float64)
    xd = x.double()
    for b in range(batch):
        for jj in range(k):
            lo, hi, frac = [], [], []
            for a in range(d):
                pos = grids[a].clone()
                if a == axis:
                    pos = pos + (jj - c)
                elif a in swing_axes:
                    pos = pos + extend_scope * cum[b, swing_axes.index(a), jj]
                pos = pos.clamp(0, size[a] - 1)
                f = pos.floor()
                lo.append(f.long())
                hi.append(torch.clamp(f.long() + 1, max=size[a] - 1))
                frac.append(pos - f)
            sample = torch.zeros_like(xd[b])
            for bits in itertools.product((0, 1), repeat=d):
                idx = [hi[a] if bits[a] else lo[a] for a in range(d)]
                w = torch.ones_like(frac[0])
                for a in range(d):
                    w = w * (frac[a] if bits[a] else 1 - frac[a])
                sample += w * xd[b][(slice(None), *idx)]
            out[b] += torch.einsum("oc,c...->o...", weight[:, :, jj].double(), sample)
    if bias is not None:
        out += bias.double().view(-1, *[1] * d)
    return out.to(x.dtype)


def rand_size(dim):
    return (7, 5) if dim == 2 else (5, 4, 6)


@pytest.mark.parametrize("dim,axis", CASES)
@pytest.mark.parametrize("kind", ["odd", "anisotropic", "small"])
def test_output_shape(dim, axis, kind):
    sizes = {
        "odd": {2: (9, 7), 3: (5, 7, 3)},
        "anisotropic": {2: (16, 3), 3: (2, 12, 9)},
        "small": {2: (3, 2), 3: (2, 3, 1)},  # smaller than K = 9 along every axis
    }
    m = perturb(DSConv(CONV[dim], 3, 5, kernel_size=9, axis=axis))
    x = torch.randn(2, 3, *sizes[kind][dim])
    y = m(x)
    assert y.shape == (2, 5, *sizes[kind][dim])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dim,axis", CASES)
@pytest.mark.parametrize("size_kind", ["normal", "small"])
def test_zero_swing_is_axis_conv_with_replicate_padding(dim, axis, size_kind):
    k = 7
    size = rand_size(dim) if size_kind == "normal" else ((3, 2) if dim == 2 else (2, 3, 2))
    m = DSConv(CONV[dim], 3, 4, kernel_size=k, axis=axis)  # fresh: the swing branch is zero
    x = torch.randn(2, 3, *size)
    expected = replicate_axis_conv(x, m.conv.weight, m.conv.bias, axis, k)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,axis", CASES)
def test_agrees_with_naive_reference(dim, axis):
    torch.manual_seed(1)
    m = perturb(DSConv(CONV[dim], 3, 4, kernel_size=5, axis=axis, extend_scope=1.5), std=1.0)
    x = torch.randn(2, 3, *rand_size(dim))
    delta = m.swing(x)
    assert delta.abs().max() > 0.3  # the snake really bends
    weight = m.conv.weight.reshape(4, 3, 5)
    expected = naive_snake(x, delta, weight, m.conv.bias, axis, list(m.swing_axes), 1.5)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,axis", CASES)
def test_many_small_chunks_give_the_same_result(dim, axis, monkeypatch):
    m = perturb(DSConv(CONV[dim], 3, 4, kernel_size=5, axis=axis))
    x = torch.randn(2, 3, *rand_size(dim), requires_grad=True)
    y = m(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    monkeypatch.setattr(maths, "CHUNK_ELEMENTS", 64)  # a few positions per chunk
    y2 = m(x)
    (gx2,) = torch.autograd.grad(y2.square().sum(), x)
    torch.testing.assert_close(y2, y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx2, gx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,axis", CASES)
def test_integer_swing_is_an_exact_shifted_read(dim, axis):
    size = rand_size(dim)
    k, c = 5, 2
    swing_axes = [a for a in range(dim) if a != axis]
    x = torch.randn(1, 2, *size)
    # swing +1 at j = +1 and 0 further out: points j >= 1 sit one voxel further along the first swing axis
    delta = torch.zeros(1, len(swing_axes), k - 1, *size)
    delta[:, 0, c] = 1.0
    for j in range(-c, c + 1):
        weight = torch.zeros(2, 2, k)
        weight[:, :, j + c] = torch.eye(2)  # read kernel point j only
        y = snake_conv(x, delta.flatten(1, 2), weight, None, axis, swing_axes)
        idx = list(torch.meshgrid(*[torch.arange(n) for n in size], indexing="ij"))
        idx[axis] = (idx[axis] + j).clamp(0, size[axis] - 1)
        s = swing_axes[0]
        idx[s] = (idx[s] + (1 if j >= 1 else 0)).clamp(0, size[s] - 1)
        assert torch.equal(y[0], x[0][(slice(None), *idx)])


@pytest.mark.parametrize("dim,axis", CASES)
def test_centre_point_never_moves_and_coordinates_are_float32(dim, axis):
    m = perturb(DSConv(CONV[dim], 3, 4, kernel_size=7, axis=axis), std=1.0)
    x = torch.randn(2, 3, *rand_size(dim))
    coords = m.snake_coordinates(x)
    assert coords.dtype == torch.float32
    assert coords.shape == (2, 7, dim, *rand_size(dim))
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in rand_size(dim)], indexing="ij")
    for a in range(dim):
        assert torch.equal(coords[:, 3, a], grids[a].expand(2, *rand_size(dim)))
        if a == axis:  # the morph axis: exact integers p_a + j, not clamped
            for j in range(-3, 4):
                assert torch.equal(coords[:, 3 + j, a], grids[a].expand(2, *rand_size(dim)) + j)
    others = [a for a in range(dim) if a != axis]
    assert (coords[:, 0, others] - torch.stack([grids[a] for a in others])).abs().max() > 0.1  # the ends swing


def test_coordinates_are_not_clamped():
    m = perturb(DSConv(nn.Conv2d, 2, 2, kernel_size=9, axis=0, extend_scope=3.0), std=3.0)
    coords = m.snake_coordinates(torch.randn(1, 2, 4, 4))
    assert coords[:, :, 0].min() < 0 and coords[:, :, 0].max() > 3  # the morph axis runs past the border
    assert coords[:, :, 1].min() < 0 or coords[:, :, 1].max() > 3


@pytest.mark.parametrize("dim,axis", CASES)
def test_batch_elements_are_independent(dim, axis):
    m = perturb(DSConv(CONV[dim], 3, 4, kernel_size=5, axis=axis), std=1.0)
    x = torch.randn(3, 3, *rand_size(dim)) * torch.tensor([0.5, 1.0, 3.0]).view(3, 1, *[1] * dim)
    coords = m.snake_coordinates(x)
    assert not torch.allclose(coords[0], coords[1])  # every sample bends its own way
    together = m(x)
    for i in range(3):
        # float32 rounding of sums of ~30 terms of size ~3 (GEMMs of other sizes); batch mixing would be O(1)
        torch.testing.assert_close(together[i : i + 1], m(x[i : i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,axis", CASES)
def test_every_parameter_receives_a_gradient(dim, axis):
    m = DSConv(CONV[dim], 3, 4, kernel_size=5, axis=axis, norm_op=NORM[dim], norm_op_kwargs={"affine": True},
               nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    x = torch.randn(2, 3, *rand_size(dim))
    m(x).square().sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    perturb(m)
    (m(x) * torch.randn(2, 4, *rand_size(dim))).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        if name.startswith("swing"):
            assert p.grad.abs().max() > 0, name


@pytest.mark.parametrize("dim,axis", CASES)
def test_gradcheck_float64(dim, axis):
    torch.manual_seed(2)
    size = (4, 3) if dim == 2 else (3, 2, 3)
    k = 5
    swing_axes = tuple(a for a in range(dim) if a != axis)
    x = torch.randn(2, 2, *size, dtype=torch.float64, requires_grad=True)
    delta = (torch.rand(2, len(swing_axes) * (k - 1), *size, dtype=torch.float64) * 1.4 - 0.7).requires_grad_()
    w = torch.randn(3, 2, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: snake_conv(*a, axis, swing_axes, 1.3), (x, delta, w, b))


def test_gradcheck_float64_multi_chunk_and_no_swing(monkeypatch):
    monkeypatch.setattr(maths, "CHUNK_ELEMENTS", 16)
    x = torch.randn(1, 2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    delta = (torch.rand(1, 4, 3, 4, 2, dtype=torch.float64) - 0.5).requires_grad_()
    w = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: snake_conv(*a, None, 1, (2,), 0.8), (x, delta, w))
    assert torch.autograd.gradcheck(lambda x_, w_: snake_conv(x_, None, w_, None, 2, ()), (x, w))


def test_points_clamped_at_the_border_get_no_swing_gradient():
    x = torch.randn(1, 1, 5, 4)
    w = torch.ones(1, 1, 3)
    delta = torch.zeros(1, 2, 5, 4)
    delta[:, 1] = 5.0  # point j = +1 pushed 5 voxels along axis 1: outside the 4-wide volume everywhere
    delta[:, 0] = 0.3  # point j = -1 stays inside for the first columns
    delta.requires_grad_()
    snake_conv(x, delta, w, None, 0, (1,)).sum().backward()
    assert torch.all(delta.grad[:, 1] == 0)
    assert delta.grad[:, 0, :, :2].abs().max() > 0


def test_autocast_bf16_keeps_coordinates_float32():
    m = perturb(DSConv(nn.Conv3d, 4, 4, kernel_size=5, axis=1))
    x = torch.randn(2, 4, 6, 5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = m.swing(x)
        coords = m.snake_coordinates(x)
        y = m(x)
    assert delta.dtype == torch.float32 and coords.dtype == torch.float32
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    torch.testing.assert_close(y.float(), m(x), rtol=0.05, atol=0.05)
    y.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("dim,axis", CASES)
@pytest.mark.parametrize("with_norm", [False, True])
def test_feature_map_size_matches_what_autograd_saves(dim, axis, with_norm):
    kw = {}
    if with_norm:
        kw = {"norm_op": NORM[dim], "norm_op_kwargs": {"affine": True}, "nonlin": nn.LeakyReLU,
                  "nonlin_kwargs": {"inplace": True}}
    m = perturb(DSConv(CONV[dim], 8, 4, kernel_size=9, axis=axis, **kw)).train()
    size = (12, 10) if dim == 2 else (6, 5, 7)
    x = torch.randn(2, 8, *size, requires_grad=True)
    measured = saved_per_sample(m, x)
    estimate = m.compute_conv_feature_map_size(size)
    # measured: within 0.19-0.93% of what autograd saves (the estimate leaves out (B, C)-sized norm statistics)
    assert abs(estimate - measured) <= 0.01 * measured, (estimate, measured)
    assert measured < 9 * x[0].numel()  # never a K-times enlarged sample tensor


def test_swing_branch_init_and_norm():
    m = DSConv(nn.Conv3d, 3, 4, kernel_size=5, axis=0, norm_op=nn.BatchNorm3d)
    assert m.swing_conv._tubeconv_keep_init is True
    assert torch.all(m.swing_conv.weight == 0) and m.swing_conv.bias is None
    assert m.swing_conv.out_channels == 2 * 4  # (d - 1) (K - 1): the centre's swing is not even predicted
    assert isinstance(m.swing_norm, nn.GroupNorm)  # never BatchNorm in the swing branch
    assert isinstance(DSConv(nn.Conv3d, 3, 4, axis=0, norm_op=nn.InstanceNorm3d).swing_norm, nn.InstanceNorm3d)
    assert isinstance(DSConv(nn.Conv2d, 3, 4, axis=0).swing_norm, nn.GroupNorm)


def test_swing_axes_restrict_the_swing():
    m = perturb(DSConv(nn.Conv3d, 2, 2, kernel_size=5, axis=1, swing_axes=[2]), std=1.0)
    coords = m.snake_coordinates(torch.randn(1, 2, 4, 5, 6))
    depth = torch.arange(4, dtype=torch.float32).view(1, 1, 4, 1, 1)
    assert torch.equal(coords[:, :, 0], depth.expand_as(coords[:, :, 0]))
    assert m.swing_conv.out_channels == 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": 0}, "odd"),
        ({"kernel_size": -3}, "odd"),
        ({"axis": 2}, "axis"),
        ({"axis": -1}, "axis"),
        ({"conv_op": nn.Conv1d}, "conv_op"),
        ({"conv_op": "torch.nn.Conv2d"}, "conv_op"),
        ({"input_channels": 0}, "input_channels"),
        ({"output_channels": -1}, "output_channels"),
        ({"extend_scope": 0.0}, "extend_scope"),
        ({"swing_axes": [0]}, "swing_axes"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    check_refused(DSConv, kwargs, match, conv_op=nn.Conv2d, input_channels=3, output_channels=4)


def test_wrong_input_raises_value_error():
    m = DSConv(nn.Conv2d, 3, 4)
    with pytest.raises(ValueError, match="2D"):
        m(torch.randn(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        m(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="input_size"):
        m.compute_conv_feature_map_size((4, 4, 4))
