"""DSConv's snake convolution as one autograd Function, dispatching to its back-ends.

``y = sum_j W_j . interp(x, point_j) + b`` (docs/explanation/maths.md section 1). Only ``x``, the swing ``delta``
and the weights are saved for backward, which recomputes the samples: no ``K``-times enlarged tensor outlives a chunk
of positions.
Every back-end computes the same numbers with the same geometry, chunking and saved tensors (the tests run each):

* :mod:`.cpu_backend`: the compiled C kernels, for float32/float64 CPU tensors where a C compiler built them;
* :mod:`.triton_backend`: the Triton kernels, for CUDA tensors (fp32, bf16, fp16) where Triton is importable;
* :mod:`.torch_backend`: PyTorch operations, for everything else.

``torch.compile`` calls this Function behind the custom op of :mod:`.custom_ops`; graph exports take the plain
operations of :mod:`.traceable` instead.
"""

from __future__ import annotations

import torch

from nnunet_tubeconv.blocks.dsconv import cpu_backend, torch_backend, triton_backend

__all__ = ["SnakeConvFunction"]


class SnakeConvFunction(torch.autograd.Function):
    """``y = sum_j W_j . interp(x, point_j) + b``; saves ``x``, ``delta`` and the weights only.

    Arguments: x ``(B, C_in, *S)``, delta ``(B, n_swing * (K - 1), *S)`` or None, weight ``(C_out, C_in, K)``, bias
    ``(C_out,)`` or None, the morph ``axis``, the ``swing_axes`` (a tuple) and ``extend_scope``.
    """

    @staticmethod
    def forward(ctx, x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float):
        native = cpu_backend.kernels(x, delta, weight, axis, swing_axes)
        ctx.save_for_backward(x, delta, weight)
        ctx.has_bias = bias is not None
        ctx.axis, ctx.swing_axes, ctx.extend_scope = axis, swing_axes, extend_scope
        if native is not None:
            return cpu_backend.forward(native, x, delta, weight, bias, extend_scope)
        if triton_backend.usable(x, delta, weight):  # CUDA with Triton: the kernels of triton_kernels.py
            return triton_backend.forward(x, delta, weight, bias, axis, swing_axes, extend_scope)
        return torch_backend.forward(x, delta, weight, bias, axis, swing_axes, extend_scope)

    @staticmethod
    def backward(ctx, grad_out):
        x, delta, weight = ctx.saved_tensors
        need_x, need_delta, need_w, need_b = ctx.needs_input_grad[:4]
        needs = (need_x, need_delta and delta is not None, need_w, need_b)
        native = cpu_backend.kernels(x, delta, weight, ctx.axis, ctx.swing_axes)
        if native is not None:
            grads = cpu_backend.backward(native, grad_out, x, delta, weight, ctx.has_bias, ctx.extend_scope, needs)
        elif triton_backend.usable(x, delta, weight):
            grads = triton_backend.backward(grad_out, x, delta, weight, ctx.has_bias, ctx.axis, ctx.swing_axes,
                                            ctx.extend_scope, needs)
        else:
            grads = torch_backend.backward(grad_out, x, delta, weight, ctx.has_bias, ctx.axis, ctx.swing_axes,
                                           ctx.extend_scope, needs)
        return (*grads, None, None, None)
