"""What the blocks' tests share: the 2D/3D parametrisation and input sizes, random weights, the comparison with a
written-out reference, and the count of what autograd saves (the blocks' memory estimates are checked against it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from nnunet_tubeconv.architectures.memory import measure_saved_tensors

CONVS = [pytest.param(nn.Conv2d, id="2d"), pytest.param(nn.Conv3d, id="3d")]
#: odd, anisotropic input sizes per conv op (DLK's dilated kernel, receptive field 23, is larger: padding must cope)
SIZES = {nn.Conv2d: (9, 6), nn.Conv3d: (5, 7, 4)}


def randomise(module: nn.Module, seed: int, std: float = 1.0) -> None:
    """Every parameter drawn from N(0, std^2) with its own generator (layer scales and norm affines included), so
    that every term of the block matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def check_reference(module: nn.Module, reference: Callable[..., torch.Tensor], *inputs: torch.Tensor,
                             tol: float) -> None:
    """The block's output on ``inputs`` has the first input's shape and equals ``reference(module, *inputs)``."""
    out = module(*inputs)
    assert out.shape == inputs[0].shape
    torch.testing.assert_close(out, reference(module, *inputs), rtol=tol, atol=tol)


def saved_per_sample(module: nn.Module, *inputs: torch.Tensor) -> float:
    """What autograd saves for backward in one forward of ``module`` on ``inputs``, in elements per sample of the
    batch (parameters not counted): what ``compute_conv_feature_map_size`` estimates."""
    elements, _ = measure_saved_tensors(lambda: module(*inputs), exclude=list(module.parameters()))
    return elements / inputs[0].shape[0]


def check_refused(block: type, kwargs: dict, match: str, **valid) -> None:
    """``block(**valid, **kwargs)``: a bad argument in ``kwargs`` (over the ``valid`` ones) raises a ValueError whose
    message matches ``match`` (it names the argument or what is allowed)."""
    with pytest.raises(ValueError, match=match):
        block(**{**valid, **kwargs})


def check_bad_inputs(module: nn.Module, size: tuple[int, ...], wrong_channels: int,
                                bad_input_size: tuple[int, ...]) -> None:
    """A one-input block refuses, naming what is wrong: an input with ``wrong_channels`` channels, an input with one
    axis too many, and ``bad_input_size`` for its memory estimate."""
    with pytest.raises(ValueError, match="input channels"):
        module(torch.randn(1, wrong_channels, *size))
    with pytest.raises(ValueError, match="shape"):
        module(torch.randn(1, module.channels, *size, 2))
    with pytest.raises(ValueError, match="input_size"):
        module.compute_conv_feature_map_size(bad_input_size)
