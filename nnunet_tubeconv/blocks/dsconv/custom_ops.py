"""DSConv's and scSE's custom autograd Functions as ``torch.library`` custom ops, for ``torch.compile``.

Why: ``torch.compile`` cannot trace into a Function whose forward calls compiled C kernels through ``ctypes`` (or,
on CUDA, Triton launches chosen at run time); without this module a compiled network had to fall back to the plain
tensor maths of ``_traceable.py``, which keeps ``K``-times enlarged samples for backward. A custom op is opaque to
the compiler: dynamo and AOTAutograd see one node whose output shapes come from the fake (meta) implementation
registered here, and at run time the node calls the very same ``forward`` / ``backward`` of the eager Functions
(``dsconv._SnakeConvFunction``, ``scse._ScseAddFunction``), with whatever kernel dispatch they do (C loops on CPU,
the PyTorch path elsewhere). So a compiled network computes what the eager one computes, with the same kernels and
the same lean memory: only ``x``, the swing and the weights are saved for backward.

Each Function gives two ops, forward and backward, so that the backward is opaque too (AOTAutograd traces the
backward formula registered with ``register_autograd``: a ctypes call there would break the graph). Non-tensor
state the Functions keep on ``ctx`` travels as op arguments (ints, floats, bools, int lists). Gradients that are
not needed come back as empty tensors (an op cannot return None) and are turned into None again.

Coupling to keep: the backward ops rebuild the ctx the Functions' ``backward`` reads from what their ``forward``
saves (DSConv: ``x``, ``delta``, ``weight`` and ``has_bias``, ``axis``, ``swing_axes``, ``extend_scope``; scSE: the
flattened input, the gates, ``pooled``, ``hidden``, ``w1``, ``w2``, ``ws`` and the kernels). A change there must be
mirrored here; ``tests/test_compile.py`` (opcheck, op against Function bit for bit) fails otherwise.

Which capture takes which path (``_utils._tracing`` / ``_utils._compiling``): ONNX export, TorchScript and
``torch.export`` take the plain maths (an exported graph must not name our ops); ``torch.compile`` takes these ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nnunet_tubeconv.blocks import _native

__all__ = ["native_available", "scse_add", "snake_conv"]


class _Ctx:
    """Stands in for an autograd ctx when a Function's ``forward`` / ``backward`` runs inside an op."""

    def __init__(self, saved: tuple = (), needs: Sequence[bool] = ()):
        self.saved_tensors = saved
        self.needs_input_grad = tuple(needs)

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _like(t: Tensor) -> Tensor:
    """A contiguous tensor of ``t``'s shape and dtype: the real ops return contiguous tensors whatever the input's
    layout (e.g. channels-last), and a compiler trusts the fake's strides."""
    return t.new_empty(t.shape)


def _or_empty(grad: Tensor | None, like: Tensor) -> Tensor:
    return _empty(like) if grad is None else grad


# ---------------------------------------------------------------------------------------------------------- DSConv
@torch.library.custom_op("nnunet_tubeconv::snake_conv", mutates_args=())
def _snake_conv_op(x: Tensor, delta: Tensor | None, weight: Tensor, bias: Tensor | None, axis: int,
                   swing_axes: list[int], extend_scope: float) -> Tensor:
    from nnunet_tubeconv.blocks.dsconv import _SnakeConvFunction

    return _SnakeConvFunction.forward(_Ctx(), x, delta, weight, bias, axis, tuple(swing_axes), extend_scope)


@_snake_conv_op.register_fake
def _(x, delta, weight, bias, axis, swing_axes, extend_scope):
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:]))


@torch.library.custom_op("nnunet_tubeconv::snake_conv_backward", mutates_args=())
def _snake_conv_backward_op(grad_out: Tensor, x: Tensor, delta: Tensor | None, weight: Tensor, has_bias: bool,
                            axis: int, swing_axes: list[int], extend_scope: float,
                            needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from nnunet_tubeconv.blocks.dsconv import _SnakeConvFunction

    ctx = _Ctx((x, delta, weight), list(needs) + [False] * 3)
    ctx.has_bias, ctx.axis, ctx.swing_axes, ctx.extend_scope = has_bias, axis, tuple(swing_axes), extend_scope
    gx, gd, gw, gb = _SnakeConvFunction.backward(ctx, grad_out)[:4]
    like_d = x if delta is None else delta
    return _or_empty(gx, x), _or_empty(gd, like_d), _or_empty(gw, weight), _or_empty(gb, weight)


@_snake_conv_backward_op.register_fake
def _(grad_out, x, delta, weight, has_bias, axis, swing_axes, extend_scope, needs):
    need_x, need_d, need_w, need_b = needs
    return (
        _like(x) if need_x else _empty(x),
        _like(delta) if (need_d and delta is not None) else _empty(x if delta is None else delta),
        _like(weight) if need_w else _empty(weight),
        weight.new_empty((weight.shape[0],)) if (need_b and has_bias) else _empty(weight),
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


_snake_conv_op.register_autograd(_snake_backward, setup_context=_snake_setup)


def snake_conv(x: Tensor, delta: Tensor | None, weight: Tensor, bias: Tensor | None, axis: int,
               swing_axes: Sequence[int], extend_scope: float) -> Tensor:
    """``dsconv._SnakeConvFunction.apply`` as one custom op (same arguments, same result, same kernels)."""
    return _snake_conv_op(x, delta, weight, bias, int(axis), [int(s) for s in swing_axes], float(extend_scope))


# ------------------------------------------------------------------------------------------------------------ scSE
@torch.compiler.assume_constant_result
def native_available() -> bool:
    """Whether the compiled CPU kernels loaded (built on first call); a constant to ``torch.compile``."""
    return _native._library() is not None


def _scse_kernels(x: Tensor, params: Sequence[Tensor]):
    kernels = _native.scse_add_kernels(x, *params)
    if kernels is None:
        raise RuntimeError("nnunet_tubeconv::scse_add needs the CPU kernels and float32/float64 CPU tensors; "
                           "SCSE only calls it when scse_native_ok() is True")
    return kernels


@torch.library.custom_op("nnunet_tubeconv::scse_add", mutates_args=())
def _scse_add_op(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, ws: Tensor,
                 bs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from nnunet_tubeconv.blocks.scse import _ScseAddFunction

    ctx = _Ctx()
    out = _ScseAddFunction.forward(ctx, x, _scse_kernels(x, (w1, b1, w2, b2, ws, bs)), w1, b1, w2, b2, ws, bs)
    _, q, pooled, hidden, z = ctx.saved_tensors[:5]
    return out, q, pooled, hidden, z


@_scse_add_op.register_fake
def _(x, w1, b1, w2, b2, ws, bs):
    batch, channels = x.shape[0], x.shape[1]
    return (_like(x), x.new_empty((batch, x[0, 0].numel())), x.new_empty((batch, channels)),
            x.new_empty((batch, w1.shape[0])), x.new_empty((batch, channels)))


@torch.library.custom_op("nnunet_tubeconv::scse_add_backward", mutates_args=())
def _scse_add_backward_op(grad: Tensor, x: Tensor, q: Tensor, pooled: Tensor, hidden: Tensor, z: Tensor, w1: Tensor,
                          b1: Tensor, w2: Tensor, b2: Tensor, ws: Tensor,
                          bs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from nnunet_tubeconv.blocks.scse import _ScseAddFunction

    x_flat = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
    ctx = _Ctx((x_flat, q, pooled, hidden, z, w1, w2, ws.contiguous()))
    ctx.kernels, ctx.shape = _scse_kernels(x, (w1, b1, w2, b2, ws, bs)), x.shape
    gx, _, gw1, gb1, gw2, gb2, gws, gbs = _ScseAddFunction.backward(ctx, grad)
    return gx, gw1, gb1, gw2, gb2, gws, gbs


@_scse_add_backward_op.register_fake
def _(grad, x, q, pooled, hidden, z, w1, b1, w2, b2, ws, bs):
    return tuple(_like(t) for t in (x, w1, b1, w2, b2, ws, bs))


def _scse_setup(ctx, inputs, output):
    x, w1, b1, w2, b2, ws, bs = inputs
    _, q, pooled, hidden, z = output
    ctx.save_for_backward(x, q, pooled, hidden, z, w1, b1, w2, b2, ws, bs)
    ctx.mark_non_differentiable(q, pooled, hidden, z)


def _scse_backward(ctx, grad, *_unused):
    return _scse_add_backward_op(grad, *ctx.saved_tensors)


_scse_add_op.register_autograd(_scse_backward, setup_context=_scse_setup)


def scse_native_ok(x: Tensor, params: Sequence[Tensor]) -> bool:
    """True where :func:`scse_add` can run: CPU tensors of one float32/float64 dtype and the kernels built (the
    conditions of ``_native.scse_add_kernels``, decided from metadata alone so that a compiled graph can branch)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if any(p.dtype != x.dtype or p.device.type != "cpu" for p in params):
        return False
    return native_available()


def scse_add(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, ws: Tensor, bs: Tensor) -> Tensor:
    """``scse._ScseAddFunction`` (the compiled CPU kernels of scSE "add") as one custom op."""
    return _scse_add_op(x, w1, b1, w2, b2, ws, bs)[0]
