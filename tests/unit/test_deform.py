"""DeformConv (modulated DCNv2, docs/explanation/maths.md section 6): torchvision in 2D, our grid_sample Function in
3D."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from support.blocks import check_refused, saved_per_sample
from torch import nn
from torchvision.ops import deform_conv2d

from nnunet_tubeconv.blocks import DeformConv
from nnunet_tubeconv.blocks.deform import deform_conv_nd

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def naive_deform(x, offset, mask, weight, bias, stride, padding):
    """Explicit reference: loops over batch, kernel points and interpolation corners; zero outside the input."""
    batch, _, *size = x.shape
    d = len(size)
    kernel = weight.shape[2:]
    out_size = offset.shape[2:]
    out = torch.zeros(batch, weight.shape[0], *out_size, dtype=torch.float64)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in out_size], indexing="ij")
    for b in range(batch):
        for p, q in enumerate(itertools.product(*[range(k) for k in kernel])):
            pos = [grids[a] * stride[a] - padding[a] + q[a] + offset[b, d * p + a].double() for a in range(d)]
            low = [t.floor() for t in pos]
            sample = torch.zeros(x.shape[1], *out_size, dtype=torch.float64)
            for bits in itertools.product((0, 1), repeat=d):
                corner = [low[a] + bits[a] for a in range(d)]
                w = torch.ones(out_size, dtype=torch.float64)
                valid = torch.ones(out_size, dtype=torch.bool)
                for a in range(d):
                    w = w * (pos[a] - low[a] if bits[a] else 1 - (pos[a] - low[a]))
                    valid &= (corner[a] >= 0) & (corner[a] <= size[a] - 1)
                idx = [corner[a].clamp(0, size[a] - 1).long() for a in range(d)]
                sample += (w * valid) * x[b].double()[(slice(None), *idx)]
            sample = sample * mask[b, p].double()
            out[b] += torch.einsum("oc,c...->o...", weight.flatten(2)[:, :, p].double(), sample)
    if bias is not None:
        out += bias.double().view(-1, *[1] * d)
    return out


def random_inputs(dim, size, kernel, stride, dtype=torch.float32, seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    padding = tuple((k - 1) // 2 for k in kernel)
    out_size = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(size, padding, kernel, stride))
    n_points = 1
    for k in kernel:
        n_points *= k
    x = torch.randn(batch, 3, *size, generator=g, dtype=dtype)
    offset = torch.randn(batch, dim * n_points, *out_size, generator=g, dtype=dtype) * 1.5
    mask = torch.rand(batch, n_points, *out_size, generator=g, dtype=dtype)
    weight = torch.randn(4, 3, *kernel, generator=g, dtype=dtype)
    bias = torch.randn(4, generator=g, dtype=dtype)
    return x, offset, mask, weight, bias, padding


@pytest.mark.parametrize("size,kernel,stride",
                         [((7, 6), (3, 3), (1, 1)), ((8, 9), (3, 1), (2, 1)), ((5, 5), (3, 3), (2, 2))])
def test_nd_function_equals_torchvision_in_2d(size, kernel, stride):
    x, offset, mask, weight, bias, padding = random_inputs(2, size, kernel, stride)
    ours = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    ref = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    y = deform_conv_nd(*ours, stride=stride, padding=padding)
    y_ref = deform_conv2d(ref[0], ref[1], ref[3], ref[4], stride, padding, mask=ref[2])
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("size,kernel,stride", [((4, 5, 3), (3, 3, 3), (1, 1, 1)), ((5, 4, 6), (1, 3, 3), (1, 2, 2))])
def test_3d_agrees_with_explicit_reference(size, kernel, stride):
    x, offset, mask, weight, bias, padding = random_inputs(3, size, kernel, stride)
    y = deform_conv_nd(x, offset, mask, weight, bias, stride, padding)
    expected = naive_deform(x, offset, mask, weight, bias, stride, padding)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_3d_gradcheck_float64():
    *tensors, padding = random_inputs(3, (3, 4, 3), (3, 3, 1), (2, 1, 1), torch.float64, seed=3, batch=1)
    inputs = tuple(t.requires_grad_() for t in tensors)
    assert torch.autograd.gradcheck(lambda *a: deform_conv_nd(*a, stride=(2, 1, 1), padding=padding), inputs)


@pytest.mark.parametrize("dim", [2, 3])
def test_fresh_block_is_half_a_convolution(dim):
    """Zero offsets and the paper's modulation init sigmoid(0) = 0.5."""
    m = DeformConv(CONV[dim], 3, 4, kernel_size=3, stride=2)
    x = torch.randn(2, 3, *((9, 8) if dim == 2 else (5, 6, 7)))
    conv = F.conv2d if dim == 2 else F.conv3d
    expected = 0.5 * conv(x, m.conv.weight, None, stride=2, padding=1) + m.conv.bias.view(-1, *[1] * dim)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    assert m.offset_conv._tubeconv_keep_init is True


@pytest.mark.parametrize(
    "dim,size,kernel,stride",
    [(2, (13, 9), 3, 1), (2, (5, 3), 3, 2), (3, (3, 5, 4), 3, 1), (3, (4, 9, 7), [1, 3, 3], [1, 2, 2]),
     (3, (1, 2, 3), 3, 2)],
)
def test_output_shape_matches_a_same_padded_conv(dim, size, kernel, stride):
    m = DeformConv(CONV[dim], 3, 4, kernel_size=kernel, stride=stride)
    x = torch.randn(2, 3, *size)
    conv = CONV[dim](3, 4, kernel, stride=stride, padding=[(k - 1) // 2 for k in m.kernel_size])
    assert m(x).shape == conv(x).shape


def perturb(m, std=0.3):
    with torch.no_grad():
        m.offset_conv.weight.normal_(0, std)
        m.offset_conv.bias.normal_(0, std)
    return m


@pytest.mark.parametrize("dim", [2, 3])
def test_batch_elements_are_independent(dim):
    m = perturb(DeformConv(CONV[dim], 3, 4))
    x = torch.randn(3, 3, *((7, 6) if dim == 2 else (4, 5, 3))) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, *[1] * dim)
    together = m(x)
    for i in range(3):
        torch.testing.assert_close(together[i : i + 1], m(x[i : i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_every_parameter_receives_a_gradient(dim):
    m = DeformConv(CONV[dim], 3, 4, norm_op=NORM[dim], norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
                   nonlin_kwargs={"inplace": True})
    x = torch.randn(2, 3, *((6, 5) if dim == 2 else (4, 5, 3)))
    perturb(m)
    (m(x) * torch.randn(2, 4, *x.shape[2:])).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("dim,stride", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_feature_map_size_matches_what_autograd_saves(dim, stride):
    m = perturb(DeformConv(CONV[dim], 3, 4, stride=stride, norm_op=NORM[dim], norm_op_kwargs={"affine": True},
                           nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})).train()
    size = (12, 10) if dim == 2 else (6, 5, 7)
    measured = saved_per_sample(m, torch.randn(2, 3, *size))
    estimate = m.compute_conv_feature_map_size(size)
    # measured: within 0.04-0.71% of what autograd saves (small per-channel tensors are left out)
    assert abs(estimate - measured) <= 0.01 * measured, (estimate, measured)


def test_autocast_bf16_forward_is_finite():
    for dim in (2, 3):
        m = perturb(DeformConv(CONV[dim], 3, 4))
        x = torch.randn(1, 3, *((6, 5) if dim == 2 else (4, 5, 3)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            offset, mask = m.offsets_and_mask(x)
            y = m(x)
        assert offset.dtype == torch.float32 and mask.dtype == torch.float32
        assert torch.isfinite(y.float()).all()
        torch.testing.assert_close(y.float(), m(x), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"conv_op": nn.Conv1d}, "conv_op"),
        ({"input_channels": 0}, "input_channels"),
        ({"output_channels": 0}, "output_channels"),
        ({"kernel_size": 2}, "odd"),
        ({"kernel_size": [3, 3, 3]}, "kernel_size"),
        ({"stride": 0}, "stride"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    check_refused(DeformConv, kwargs, match, conv_op=nn.Conv2d, input_channels=3, output_channels=4)


def test_wrong_input_raises_value_error():
    m = DeformConv(nn.Conv3d, 3, 4)
    with pytest.raises(ValueError, match="3D"):
        m(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="offset"):
        deform_conv_nd(torch.randn(1, 3, 4, 4), torch.zeros(1, 5, 4, 4), torch.zeros(1, 9, 4, 4),
                       torch.randn(2, 3, 3, 3), padding=1)
