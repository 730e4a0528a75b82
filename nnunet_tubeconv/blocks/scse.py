"""Concurrent spatial and channel squeeze & excitation (scSE).

Roy, Navab and Wachinger, "Concurrent Spatial and Channel 'Squeeze & Excitation' in Fully Convolutional Networks",
MICCAI 2018 (arXiv 1803.02579); maths: docs/maths.md section 5. One N-D implementation, dimension from ``conv_op``; the
channel squeeze pools over every spatial axis (a 3D block that pools per slice is a known defect elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnunet_tubeconv.blocks import _custom_ops, _native
from nnunet_tubeconv.blocks._utils import (
    _compiling,
    _tracing,
    as_tuple,
    check_channels,
    check_input,
    conv_op_to_dim,
    numel,
)
from nnunet_tubeconv.vocabulary import SCSE_MODES


class _ScseAddFunction(torch.autograd.Function):
    """The whole scSE "add" block as one autograd node on CPU, with the compiled kernels of ``_native``.

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
        if self.mode == "add" and not torch.is_autocast_enabled(x.device.type) and _compiling():
            params = list(self.parameters())
            if _custom_ops.scse_native_ok(x, params):  # the compiled kernels behind a custom op
                c, cb = self.channels, self.bottleneck
                return _custom_ops.scse_add(x, self.squeeze.weight.view(cb, c), self.squeeze.bias,
                                            self.excite.weight.view(c, cb), self.excite.bias,
                                            self.spatial.weight.view(c), self.spatial.bias)
        elif self.mode == "add" and not torch.is_autocast_enabled(x.device.type) and not _tracing():
            kernels = _native.scse_add_kernels(x, *self.parameters())
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
