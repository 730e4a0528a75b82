"""DSConv's autograd Function as a ``torch.library`` custom op, for ``torch.compile``.

Why: ``torch.compile`` cannot trace into a Function whose forward calls compiled C kernels through ``ctypes`` (or,
on CUDA, Triton launches chosen at run time); without this module a compiled network had to fall back to the plain
tensor maths of ``traceable.py``, which keeps ``K``-times enlarged samples for backward. A custom op is opaque to
the compiler: dynamo and AOTAutograd see one node whose output shapes come from the fake (meta) implementation
registered here, and at run time the node calls the very same ``forward`` / ``backward`` of the eager Function
(:class:`.function.SnakeConvFunction`), with whatever kernel dispatch it does (C loops on CPU, Triton on CUDA, the
PyTorch path elsewhere). So a compiled network computes what the eager one computes, with the same kernels and the
same lean memory: only ``x``, the swing and the weights are saved for backward. scSE's op, built the same way, is
in ``nnunet_tubeconv/blocks/scse.py``; the helpers both use (``OpContext`` ...) in ``nnunet_tubeconv/blocks/utils.py``.

The Function gives two ops, forward and backward, so that the backward is opaque too (AOTAutograd traces the
backward formula registered with ``register_autograd``: a ctypes call there would break the graph). Non-tensor
state the Function keeps on ``ctx`` travels as op arguments (ints, floats, bools, int lists). Gradients that are
not needed come back as empty tensors (an op cannot return None) and are turned into None again.

Coupling to keep: the backward op rebuilds the ctx the Function's ``backward`` reads from what its ``forward``
saves (``x``, ``delta``, ``weight`` and ``has_bias``, ``axis``, ``swing_axes``, ``extend_scope``). A change there
must be mirrored here; ``tests/unit/test_compile.py`` (opcheck, op against Function bit for bit) fails otherwise.

Which capture takes which path (``utils.tracing`` / ``utils.compiling``): ONNX export, TorchScript and
``torch.export`` take the plain maths (an exported graph must not name our ops); ``torch.compile`` takes this op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nnunet_tubeconv.blocks.dsconv.function import SnakeConvFunction
from nnunet_tubeconv.blocks.utils import OpContext, contiguous_like, empty_tensor, or_empty

__all__ = ["snake_conv", "snake_conv_op"]


@torch.library.custom_op("nnunet_tubeconv::snake_conv", mutates_args=())
def snake_conv_op(x: Tensor, delta: Tensor | None, weight: Tensor, bias: Tensor | None, axis: int,
                  swing_axes: list[int], extend_scope: float) -> Tensor:
    return SnakeConvFunction.forward(OpContext(), x, delta, weight, bias, axis, tuple(swing_axes), extend_scope)


@snake_conv_op.register_fake
def _(x, delta, weight, bias, axis, swing_axes, extend_scope):
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:]))


@torch.library.custom_op("nnunet_tubeconv::snake_conv_backward", mutates_args=())
def _snake_conv_backward_op(grad_out: Tensor, x: Tensor, delta: Tensor | None, weight: Tensor, has_bias: bool,
                            axis: int, swing_axes: list[int], extend_scope: float,
                            needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ctx = OpContext((x, delta, weight), list(needs) + [False] * 3)
    ctx.has_bias, ctx.axis, ctx.swing_axes, ctx.extend_scope = has_bias, axis, tuple(swing_axes), extend_scope
    gx, gd, gw, gb = SnakeConvFunction.backward(ctx, grad_out)[:4]
    like_d = x if delta is None else delta
    return or_empty(gx, x), or_empty(gd, like_d), or_empty(gw, weight), or_empty(gb, weight)


@_snake_conv_backward_op.register_fake
def _(grad_out, x, delta, weight, has_bias, axis, swing_axes, extend_scope, needs):
    need_x, need_d, need_w, need_b = needs
    return (
        contiguous_like(x) if need_x else empty_tensor(x),
        contiguous_like(delta) if (need_d and delta is not None) else empty_tensor(x if delta is None else delta),
        contiguous_like(weight) if need_w else empty_tensor(weight),
        weight.new_empty((weight.shape[0],)) if (need_b and has_bias) else empty_tensor(weight),
    )


def _snake_setup(ctx, inputs, output):
    x, delta, weight, bias, axis, swing_axes, extend_scope = inputs
    ctx.save_for_backward(x, delta, weight)
    ctx.has_bias, ctx.axis, ctx.swing_axes, ctx.extend_scope = bias is not None, axis, swing_axes, extend_scope


def _snake_backward(ctx, grad_out):
    x, delta, weight = ctx.saved_tensors
    need_x, need_d, need_w, need_b = ctx.needs_input_grad[:4]
    needs = [bool(need_x), bool(need_d and delta is not None), bool(need_w), bool(need_b and ctx.has_bias)]
    grads = _snake_conv_backward_op(grad_out, x, delta, weight, ctx.has_bias, ctx.axis, ctx.swing_axes,
                                    ctx.extend_scope, needs)
    gx, gd, gw, gb = (g if need else None for g, need in zip(grads, needs))
    return gx, gd, gw, gb, None, None, None


snake_conv_op.register_autograd(_snake_backward, setup_context=_snake_setup)


def snake_conv(x: Tensor, delta: Tensor | None, weight: Tensor, bias: Tensor | None, axis: int,
               swing_axes: Sequence[int], extend_scope: float) -> Tensor:
    """``SnakeConvFunction.apply`` as one custom op (same arguments, same result, same kernels)."""
    return snake_conv_op(x, delta, weight, bias, int(axis), [int(s) for s in swing_axes], float(extend_scope))
