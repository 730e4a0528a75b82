"""DSCBlock: the DSCNet multi-view block (docs/explanation/maths.md section 2), 2D and 3D."""

import pytest
import torch
import torch.nn.functional as F
from support.blocks import check_refused, saved_per_sample
from torch import nn

from nnunet_tubeconv.blocks import DSCBlock

torch.manual_seed(0)

DIMS = {
    2: (nn.Conv2d, nn.InstanceNorm2d),
    3: (nn.Conv3d, nn.InstanceNorm3d),
}


def make(dim, c_in=3, c_out=4, kernel=3, stride=1, k=5, **kw):
    conv, norm = DIMS[dim]
    return DSCBlock(
        conv_op=conv, input_channels=c_in, output_channels=c_out, kernel_size=kernel, stride=stride,
        norm_op=norm, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        snake_kernel_size=k, **kw,
    )


def perturb_swing(block, std=0.3):
    for snake in block.snakes:
        if snake.swing_conv is not None:
            nn.init.normal_(snake.swing_conv.weight, std=std)


@pytest.mark.parametrize(
    "dim,size,kernel,stride",
    [
        (2, (13, 9), 3, 1),  # odd sizes
        (2, (3, 4), 3, 1),  # smaller than K
        (2, (16, 12), 3, 2),
        (3, (5, 7, 6), 3, 1),
        (3, (4, 12, 10), [1, 3, 3], [1, 2, 2]),  # anisotropic stage
        (3, (2, 3, 3), 3, 1),  # smaller than K
    ],
)
def test_output_shape_matches_a_same_padded_conv(dim, size, kernel, stride):
    block = make(dim, kernel=kernel, stride=stride)
    perturb_swing(block)
    x = torch.randn(2, 3, *size)
    conv = DIMS[dim][0](3, 4, kernel, stride=stride, padding=[(k - 1) // 2 for k in block.kernel_size])
    assert block(x).shape == conv(x).shape


def test_anisotropic_kernel_gets_no_snake_along_or_across_the_flat_axis():
    block = make(3, kernel=[1, 3, 3], stride=[1, 2, 2])
    assert block.snake_axes == (1, 2)
    assert [s.axis for s in block.snakes] == [1, 2]
    for s in block.snakes:
        assert 0 not in s.swing_axes
    perturb_swing(block)
    coords = block.snakes[0].snake_coordinates(torch.randn(1, 4, 3, 6, 5))
    # the first spatial axis (kernel 1) never moves: coordinate equals the voxel's own index
    depth_index = torch.arange(3, dtype=torch.float32).view(1, 1, 3, 1, 1)
    assert torch.equal(coords[:, :, 0], depth_index.expand_as(coords[:, :, 0]))


def test_stride_one_branches_run_in_parallel_on_the_input_and_strided_snakes_follow_the_plain_branch():
    assert not make(2).strided_snakes_follow_plain
    assert make(2).snakes[0].input_channels == 3
    strided = make(2, stride=2)
    assert strided.strided_snakes_follow_plain
    assert strided.snakes[0].input_channels == 4


@pytest.mark.parametrize("dim", [2, 3])
def test_fresh_block_equals_its_explicit_formula(dim):
    """Zero swing: each snake is an axis-aligned conv with replicate padding (docs/explanation/maths.md section 1)."""
    block = make(dim).eval()
    size = (7, 6) if dim == 2 else (5, 6, 4)
    x = torch.randn(2, 3, *size)
    conv_fn = F.conv2d if dim == 2 else F.conv3d
    norm_fn = F.instance_norm

    def norm_act(t, norm):
        return F.leaky_relu(norm_fn(t, weight=norm.weight, bias=norm.bias, eps=norm.eps), 0.01)

    plain = norm_act(conv_fn(x, block.plain[0].weight, block.plain[0].bias, padding=1), block.plain[1])
    branches = [plain]
    for snake in block.snakes:
        pad = [0] * (2 * dim)
        # F.pad orders pairs from the last axis backwards
        pad[2 * (dim - 1 - snake.axis)] = pad[2 * (dim - 1 - snake.axis) + 1] = snake.kernel_size // 2
        y = conv_fn(F.pad(x, pad, mode="replicate"), snake.conv.weight, snake.conv.bias)
        branches.append(norm_act(y, snake.norm))
    fused = conv_fn(torch.cat(branches, 1), block.fuse.weight, block.fuse.bias, padding=1)
    expected = norm_act(fused, block.norm)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [2, 3])
def test_batch_elements_are_independent(dim):
    block = make(dim)
    perturb_swing(block)
    size = (9, 8) if dim == 2 else (5, 6, 7)
    x = torch.randn(3, 3, *size) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, *[1] * dim)
    together = block(x)
    for i in range(3):
        torch.testing.assert_close(together[i : i + 1], block(x[i : i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,stride", [(2, 1), (2, 2), (3, 1), (3, [1, 2, 2])])
def test_every_parameter_receives_a_gradient(dim, stride):
    block = make(dim, stride=stride, kernel=3 if dim == 2 or stride == 1 else [1, 3, 3])
    perturb_swing(block)
    size = (8, 8) if dim == 2 else (4, 6, 6)
    block(torch.randn(2, 3, *size)).square().sum().backward()
    no_grad = [n for n, p in block.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []


@pytest.mark.parametrize("dim,stride", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_feature_map_size_matches_what_autograd_saves(dim, stride):
    block = make(dim, stride=stride).train()
    size = (16, 12) if dim == 2 else (6, 8, 8)
    measured = saved_per_sample(block, torch.randn(2, 3, *size))
    estimate = block.compute_conv_feature_map_size(size)
    # measured: within 0.3-2.1% of what autograd saves (small per-channel tensors are left out, largest share on
    # the smallest inputs)
    assert abs(estimate - measured) <= 0.025 * measured, (estimate, measured)


def test_snake_kernel_size_changes_the_snakes_not_the_output():
    small, large = make(2, k=3), make(2, k=9)
    assert small.snakes[0].kernel_size == 3 and large.snakes[0].kernel_size == 9
    x = torch.randn(1, 3, 10, 10)
    assert small(x).shape == large(x).shape


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"conv_op": nn.Conv1d}, "conv_op"),
        ({"input_channels": 0}, "input_channels"),
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": [3, 3, 3]}, "kernel_size"),
        ({"snake_kernel_size": 4}, "kernel_size"),
        ({"stride": 0}, "stride"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    check_refused(DSCBlock, kwargs, match, conv_op=nn.Conv2d, input_channels=3, output_channels=4, kernel_size=3)


def test_wrong_input_rank_is_a_value_error():
    with pytest.raises(ValueError, match="2D"):
        make(2)(torch.randn(1, 3, 4, 4, 4))
