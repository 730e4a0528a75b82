"""Helpers shared by every block: dimension from ``conv_op``, argument checks with clear errors, the capture rules
and what the blocks' custom ops share. The bottom of ``nnunet_tubeconv.blocks``: it imports only torch.

Blocks import nothing from nnunetv2; they speak dynamic-network-architectures' vocabulary
(``conv_op``, ``norm_op``, ``nonlin`` ...) so that nnU-Net plans can configure them.

The capture rules: a block whose eager forward uses something an exported graph cannot hold (a custom autograd
Function, the compiled CPU kernels, an op without an ONNX symbolic, a memory-format conversion) asks
:func:`tracing` and, while it is True, computes the same maths in plain tensor operations. Under ``torch.compile``
(:func:`compiling`) DSConv and scSE call their kernels as ``torch.library`` custom ops instead
(``dsconv/custom_ops.py``, ``scse.py``), so a compiled network keeps the eager kernels and memory. So
``torch.onnx.export``, ``torch.jit.trace``, ``torch.export`` and ``torch.compile`` work on any network of these
blocks as it stands.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

_CONV_TO_DIM: dict[type, int] = {nn.Conv2d: 2, nn.Conv3d: 3}


def tracing() -> bool:
    """True while a graph is exported (ONNX export, TorchScript tracing or scripting, ``torch.export``): the one rule
    by which every block leaves its eager-only paths for plain tensor operations (``dsconv/traceable.py``,
    ``deform.traceable_deform_conv``), which such a graph can hold. ``torch.compile`` is not an export: see
    :func:`compiling`."""
    return bool(
        torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_exporting()
    )


def compiling() -> bool:
    """True while ``torch.compile`` captures a graph (and not an export): DSConv and scSE then call their custom
    ops (``dsconv/custom_ops.py``, ``scse.py``: the eager kernels behind a fake implementation), DeformConv and DLK
    their eager code, which dynamo traces as it stands."""
    return bool(torch.compiler.is_compiling() and not tracing())


def conv_op_to_dim(conv_op: type) -> int:
    """Number of spatial dimensions of ``conv_op`` (``nn.Conv2d`` -> 2, ``nn.Conv3d`` -> 3)."""
    if isinstance(conv_op, str):
        raise ValueError(
            f"conv_op must be a class, got the string {conv_op!r}; pass torch.nn.Conv2d or torch.nn.Conv3d, or build "
            "the network with nnunetv2's get_network_from_plans, which imports the names listed in the plans' "
            "'_kw_requires_import' (nnU-Net plans store them as strings)"
        )
    for cls, dim in _CONV_TO_DIM.items():
        if conv_op is cls or (isinstance(conv_op, type) and issubclass(conv_op, cls)):
            return dim
    raise ValueError(f"unknown conv_op {conv_op!r}: allowed are torch.nn.Conv2d and torch.nn.Conv3d")


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


def conv_output_size(input_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """Spatial output size of ``nn.Conv`` with padding ``(k - 1) // 2`` (nnU-Net's "same" padding) and ``stride``."""
    return tuple((int(n) + 2 * ((k - 1) // 2) - k) // s + 1 for n, k, s in zip(input_size, kernel_size, stride))


def check_odd_kernel(name: str, kernel_size: Sequence[int]) -> None:
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"every entry of {name} must be odd (centred kernels, 'same' padding), got {tuple(kernel_size)}"
        )


def drop_in_geometry(block: nn.Module, conv_op: type, input_channels: int, output_channels: int,
                     kernel_size: int | Sequence[int],
                     stride: int | Sequence[int]) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Check the arguments of a drop-in for dynamic-network-architectures' ``ConvDropoutNormReLU`` (DSCBlock,
    DeformConv), set them on ``block`` as its attributes ``dim``, ``input_channels``, ``output_channels``,
    ``kernel_size`` and ``stride`` (kernel and stride one odd / positive entry per axis) and return
    ``(dim, kernel, stride)``."""
    dim = conv_op_to_dim(conv_op)
    check_channels("input_channels", input_channels)
    check_channels("output_channels", output_channels)
    kernel = as_tuple("kernel_size", kernel_size, dim)
    check_odd_kernel("kernel_size", kernel)
    strides = as_tuple("stride", stride, dim)
    block.dim, block.input_channels, block.output_channels = dim, input_channels, output_channels
    block.kernel_size, block.stride = kernel, strides
    return dim, kernel, strides


def build_norm(norm_op: type | None, channels: int, norm_op_kwargs: dict | None) -> nn.Module:
    """``norm_op(channels, **norm_op_kwargs)``, or ``nn.Identity()`` when ``norm_op`` is None."""
    if norm_op is None:
        return nn.Identity()
    return norm_op(channels, **(norm_op_kwargs or {}))


def build_nonlin(nonlin: type | None, nonlin_kwargs: dict | None) -> nn.Module:
    """``nonlin(**nonlin_kwargs)``, or ``nn.Identity()`` when ``nonlin`` is None."""
    if nonlin is None:
        return nn.Identity()
    return nonlin(**(nonlin_kwargs or {}))


def build_dropout(dropout_op: type | None, dropout_op_kwargs: dict | None) -> nn.Module:
    if dropout_op is None:
        return nn.Identity()
    return dropout_op(**(dropout_op_kwargs or {}))


def is_batch_norm(norm_op: type | None) -> bool:
    return isinstance(norm_op, type) and issubclass(norm_op, nn.modules.batchnorm._BatchNorm)


def axis_grid(size: torch.Tensor | int, axis: int, dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``arange(size)`` shaped ``(1, ..., size, ..., 1)`` (``dim + 1`` axes, batch first) to broadcast over ``S``: the
    coordinate grids of the traceable (graph-export) paths."""
    shape = [1] * (dim + 1)
    shape[axis + 1] = -1
    return torch.arange(size, dtype=dtype, device=device).reshape(shape)


# ----------------------------------------------------------------------------------------------------------------
# custom ops: what DSConv's (dsconv/custom_ops.py) and scSE's (scse.py) share
# ----------------------------------------------------------------------------------------------------------------
class OpContext:
    """Stands in for an autograd ctx when a Function's ``forward`` / ``backward`` runs inside a custom op."""

    def __init__(self, saved: tuple = (), needs: Sequence[bool] = ()):
        self.saved_tensors = saved
        self.needs_input_grad = tuple(needs)

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors


def empty_tensor(like: Tensor) -> Tensor:
    """A size-0 tensor of ``like``'s dtype and device: a custom op's stand-in for a gradient that is not needed (an op
    cannot return None)."""
    return like.new_empty(0)


def contiguous_like(t: Tensor) -> Tensor:
    """A contiguous tensor of ``t``'s shape and dtype: the real ops return contiguous tensors whatever the input's
    layout (e.g. channels-last), and a compiler trusts the fake's strides."""
    return t.new_empty(t.shape)


def or_empty(grad: Tensor | None, like: Tensor) -> Tensor:
    """``grad``, or :func:`empty_tensor` where it is None."""
    return empty_tensor(like) if grad is None else grad
