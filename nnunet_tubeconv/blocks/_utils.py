"""Helpers shared by every block: dimension from ``conv_op``, argument checks with clear errors.

Blocks import nothing from nnunetv2; they speak dynamic-network-architectures' vocabulary
(``conv_op``, ``norm_op``, ``nonlin`` ...) so that nnU-Net plans can configure them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_CONV_TO_DIM: dict[type, int] = {nn.Conv2d: 2, nn.Conv3d: 3}


def conv_op_to_dim(conv_op: type) -> int:
    """Number of spatial dimensions of ``conv_op`` (``nn.Conv2d`` -> 2, ``nn.Conv3d`` -> 3)."""
    if isinstance(conv_op, str):
        raise ValueError(
            f"conv_op must be a class, got the string {conv_op!r}; pass torch.nn.Conv2d or torch.nn.Conv3d "
            "(nnU-Net plans store it as a string and resolve it with pydoc.locate before building)"
        )
    for cls, dim in _CONV_TO_DIM.items():
        if conv_op is cls or (isinstance(conv_op, type) and issubclass(conv_op, cls)):
            return dim
    raise ValueError(f"unknown conv_op {conv_op!r}: allowed are torch.nn.Conv2d and torch.nn.Conv3d")


def dim_to_conv_op(dim: int) -> type:
    if dim == 2:
        return nn.Conv2d
    if dim == 3:
        return nn.Conv3d
    raise ValueError(f"only 2 or 3 spatial dimensions are supported, got {dim}")


def check_channels(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def as_tuple(name: str, value: int | Sequence[int], dim: int, minimum: int = 1) -> tuple[int, ...]:
    """Broadcast an int to ``dim`` entries, or check that a sequence has ``dim`` entries >= ``minimum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value,) * dim
    else:
        try:
            out = tuple(int(v) for v in value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a sequence of {dim} ints, got {value!r}") from None
        if len(out) != dim:
            raise ValueError(f"{name} must have {dim} entries (one per spatial axis), got {value!r}")
    if any(v < minimum for v in out):
        raise ValueError(f"every entry of {name} must be >= {minimum}, got {value!r}")
    return out


def check_input(x: torch.Tensor, dim: int, channels: int, block: str) -> None:
    """Raise a ValueError if ``x`` is not ``(B, channels, *spatial)`` with ``dim`` spatial axes."""
    if x.ndim != dim + 2:
        raise ValueError(
            f"{block} was built for {dim}D inputs of shape (B, C, {', '.join('DHW'[3 - dim:])}) "
            f"but got a tensor of shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(f"{block} expects {channels} input channels but got {x.shape[1]} (shape {tuple(x.shape)})")


def numel(size: Sequence[int]) -> int:
    n = 1
    for s in size:
        n *= int(s)
    return n
