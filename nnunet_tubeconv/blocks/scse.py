"""Concurrent spatial and channel squeeze & excitation (scSE).

Roy, Navab and Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
MICCAI 2018 (arXiv 1803.02579); maths: docs/explanation/maths.md section 5. One N-D implementation, dimension from
``conv_op``; the channel squeeze pools over every spatial axis (a 3D block that pools per slice is a known defect
elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nnunet_tubeconv.blocks.dsconv import cpu_backend
from nnunet_tubeconv.blocks.utils import (
    OpContext,
    as_tuple,
    check_channels,
    check_input,
    compiling,
    contiguous_like,
    conv_op_to_dim,
    numel,
    tracing,
)
from nnunet_tubeconv.vocabulary import SCSE_MODES

__all__ = ["SCSE", "scse_add", "scse_add_op", "scse_native_ok"]


class _ScseAddFunction(torch.autograd.Function):
    """The whole scSE "add" block as one autograd node on CPU, with the compiled kernels of
    :mod:`nnunet_tubeconv.blocks.dsconv.cpu_backend` (one C library serves DSConv and scSE).

    ``x (sigmoid(W2 relu(W1 mean(x) + b1) + b2) + sigmoid(ws . x + bs))``: forward reads ``x`` twice (the mean,
    then gates and output in one pass), backward reads ``g`` and ``x`` once and writes the input gradient once (the
    channel MLP's backward in between is a few ``(B, C)`` products). The plain expression makes about three times
    as many full-size passes. Saves ``x``, the spatial gate and ``(B, C)``-sized vectors, as the plain path does.
    """

    @staticmethod
    def forward(ctx, x, kernels, w1, b1, w2, b2, ws, bs):
        batch, channels = x.shape[:2]
        x_flat = x.reshape(batch, channels, -1).contiguous()
        pooled = x_flat.mean(2)
        hidden = torch.relu(torch.addmm(b1, pooled, w1.t()))
        z = torch.sigmoid(torch.addmm(b2, hidden, w2.t())).contiguous()
        ws_c = ws.contiguous()
        out, q = kernels.forward(x_flat, ws_c, float(bs), z)
        ctx.save_for_backward(x_flat, q, pooled, hidden, z, w1, w2, ws_c)
        ctx.kernels, ctx.shape = kernels, x.shape
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        x_flat, q, pooled, hidden, z, w1, w2, ws = ctx.saved_tensors
        kernels = ctx.kernels
        g = grad.reshape(x_flat.shape).to(x_flat.dtype).contiguous()
        gl, gz, grad_ws = kernels.backward_reduce(g, x_flat, q)
        d_z = gz * z * (1 - z)  # through the channel gate's sigmoid
        grad_w2, grad_b2 = d_z.t() @ hidden, d_z.sum(0)
        d_hidden = (d_z @ w2) * (hidden > 0)
        grad_w1, grad_b1 = d_hidden.t() @ pooled, d_hidden.sum(0)
        gpool = (d_hidden @ w1).contiguous()
        grad_x = kernels.backward_input(g, z, q, gl, ws, gpool)
        return grad_x.view(ctx.shape), None, grad_w1, grad_b1, grad_w2, grad_b2, grad_ws, gl.sum().view(1)


# ----------------------------------------------------------------------------------------------------------------
# _ScseAddFunction as torch.library custom ops, for torch.compile (why, and how: nnunet_tubeconv/blocks/dsconv/
# custom_ops.py, which does the same for DSConv). Coupling to keep: the backward op rebuilds the ctx the Function's
# backward reads from what its forward saves (the flattened input, the gates, pooled, hidden, w1, w2, ws and the
# kernels); a change there must be mirrored here, tests/unit/test_compile.py (opcheck, op against Function) fails
# otherwise.
# ----------------------------------------------------------------------------------------------------------------
def _scse_kernels(x: Tensor, params: Sequence[Tensor]):
    kernels = cpu_backend.scse_add_kernels(x, *params)
    if kernels is None:
        raise RuntimeError("nnunet_tubeconv::scse_add needs the CPU kernels and float32/float64 CPU tensors; "
                           "SCSE only calls it when scse_native_ok() is True")
    return kernels


@torch.library.custom_op("nnunet_tubeconv::scse_add", mutates_args=())
def scse_add_op(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, ws: Tensor,
                bs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    ctx = OpContext()
    out = _ScseAddFunction.forward(ctx, x, _scse_kernels(x, (w1, b1, w2, b2, ws, bs)), w1, b1, w2, b2, ws, bs)
    _, q, pooled, hidden, z = ctx.saved_tensors[:5]
    return out, q, pooled, hidden, z


@scse_add_op.register_fake
def _(x, w1, b1, w2, b2, ws, bs):
    batch, channels = x.shape[0], x.shape[1]
    return (contiguous_like(x), x.new_empty((batch, x[0, 0].numel())), x.new_empty((batch, channels)),
            x.new_empty((batch, w1.shape[0])), x.new_empty((batch, channels)))


@torch.library.custom_op("nnunet_tubeconv::scse_add_backward", mutates_args=())
def _scse_add_backward_op(grad: Tensor, x: Tensor, q: Tensor, pooled: Tensor, hidden: Tensor, z: Tensor, w1: Tensor,
                          b1: Tensor, w2: Tensor, b2: Tensor, ws: Tensor,
                          bs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    x_flat = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
    ctx = OpContext((x_flat, q, pooled, hidden, z, w1, w2, ws.contiguous()))
    ctx.kernels, ctx.shape = _scse_kernels(x, (w1, b1, w2, b2, ws, bs)), x.shape
    gx, _, gw1, gb1, gw2, gb2, gws, gbs = _ScseAddFunction.backward(ctx, grad)
    return gx, gw1, gb1, gw2, gb2, gws, gbs


@_scse_add_backward_op.register_fake
def _(grad, x, q, pooled, hidden, z, w1, b1, w2, b2, ws, bs):
    return tuple(contiguous_like(t) for t in (x, w1, b1, w2, b2, ws, bs))


def _scse_setup(ctx, inputs, output):
    x, w1, b1, w2, b2, ws, bs = inputs
    _, q, pooled, hidden, z = output
    ctx.save_for_backward(x, q, pooled, hidden, z, w1, b1, w2, b2, ws, bs)
    ctx.mark_non_differentiable(q, pooled, hidden, z)


def _scse_backward(ctx, grad, *_unused):
    return _scse_add_backward_op(grad, *ctx.saved_tensors)


scse_add_op.register_autograd(_scse_backward, setup_context=_scse_setup)


def scse_native_ok(x: Tensor, params: Sequence[Tensor]) -> bool:
    """True where :func:`scse_add` can run: CPU tensors of one float32/float64 dtype and the kernels built (the
    conditions of ``cpu_backend.scse_add_kernels``, decided from metadata alone so that a compiled graph can
    branch)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if any(p.dtype != x.dtype or p.device.type != "cpu" for p in params):
        return False
    return cpu_backend.available()


def scse_add(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, ws: Tensor, bs: Tensor) -> Tensor:
    """:class:`_ScseAddFunction` (the compiled CPU kernels of scSE "add") as one custom op."""
    return scse_add_op(x, w1, b1, w2, b2, ws, bs)[0]


class SCSE(nn.Module):
    """``x: (B, C, *S) -> (B, C, *S)``.

    * cSE: ``z = sigmoid(W2 relu(W1 GAP(x)))`` with ``W1: C -> max(1, C // reduction)``, ``W2`` back to ``C``
      (1x1 convolutions with bias, i.e. the paper's fully connected layers); output ``x * z`` per channel.
    * sSE: ``q = sigmoid(conv1x1_{C->1}(x))``; output ``x * q`` per voxel.
    * ``mode="add"``: ``x z + x q``; ``mode="max"``: element-wise ``max(x z, x q)`` (both studied in the paper).
    """

    def __init__(self, conv_op: type, channels: int, reduction: int = 2, mode: str = "add") -> None:
        super().__init__()
        self.dim = conv_op_to_dim(conv_op)
        self.channels = check_channels("channels", channels)
        self.reduction = check_channels("reduction", reduction)
        if mode not in SCSE_MODES:
            raise ValueError(f"unknown scSE mode {mode!r}: allowed are {', '.join(map(repr, SCSE_MODES))}")
        self.mode = mode
        self.bottleneck = max(1, channels // reduction)
        self.squeeze = conv_op(channels, self.bottleneck, 1)
        self.excite = conv_op(self.bottleneck, channels, 1)
        self.spatial = conv_op(channels, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bottleneck={self.bottleneck}, mode={self.mode!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.dim, self.channels, "SCSE")
        if self.mode == "add" and not torch.is_autocast_enabled(x.device.type) and compiling():
            params = list(self.parameters())
            if scse_native_ok(x, params):  # the compiled kernels behind a custom op
                c, cb = self.channels, self.bottleneck
                return scse_add(x, self.squeeze.weight.view(cb, c), self.squeeze.bias,
                                self.excite.weight.view(c, cb), self.excite.bias,
                                self.spatial.weight.view(c), self.spatial.bias)
        elif self.mode == "add" and not torch.is_autocast_enabled(x.device.type) and not tracing():
            kernels = cpu_backend.scse_add_kernels(x, *self.parameters())
            if kernels is not None:  # CPU, full precision: the compiled kernels (same numbers, fewer passes)
                c, cb = self.channels, self.bottleneck
                return _ScseAddFunction.apply(
                    x, kernels, self.squeeze.weight.view(cb, c), self.squeeze.bias, self.excite.weight.view(c, cb),
                    self.excite.bias, self.spatial.weight.view(c), self.spatial.bias,
                )
        pooled = x.mean(tuple(range(2, x.ndim)), keepdim=True)  # (B, C, 1, ...): every spatial axis at once
        z = torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))
        q = torch.sigmoid(self.spatial(x))
        if self.mode == "add":
            # x z + x q without the full-size (z + q) temporary that x * (z + q) would keep for backward
            return torch.addcmul(x * z, x, q)
        return torch.maximum(x * z, x * q)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Elements saved for backward per batch element in a training forward, input included.

        ``x`` (``C n``) and the spatial gate (``n``); "max" also keeps both products (``2 C n``). Plus the pooled
        vector, the bottleneck activation and the channel gate (``2C + C/r``).
        """
        n = numel(as_tuple("input_size", input_size, self.dim))
        c = self.channels
        small = 2 * c + self.bottleneck
        if self.mode == "add":
            return c * n + n + small
        return 3 * c * n + n + small
