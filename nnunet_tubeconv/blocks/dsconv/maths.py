"""The maths every DSConv back-end shares: the cumulative swing, the weight layout, the row layout, the chunking.

The bottom of the ``dsconv`` package: it imports only torch, and every back-end (``cpu_backend``,
``triton_backend``, ``torch_backend``, ``traceable``) builds on it, so they all lay out weights and positions, sum
the swing and cut the positions into chunks the same way. Maths: docs/explanation/maths.md section 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "CHUNK_ELEMENTS",
    "Rows",
    "chunks",
    "cumulative_outer",
    "cumulative_outer_backward",
    "cumulative_swing",
    "merge_weight_grad",
    "rows_of",
    "split_range",
    "split_weight",
    "to_rows",
]

# Interpolated samples of one chunk of positions hold about this many elements: small enough to stay in cache on CPU
# and to bound the transient memory on GPU, large enough to amortise the per-operation cost. Read at call time, so a
# test may lower it to cut a small input into many chunks (the CPU and PyTorch paths both follow it).
CHUNK_ELEMENTS = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# cumulative swing
# ----------------------------------------------------------------------------------------------------------------
def cumulative_outer(delta: torch.Tensor, n_swing: int, kernel_size: int) -> torch.Tensor:
    """``delta``: ``(B, n_swing * (K - 1), ...)`` -> cumulative swing of the outer points ``(B, n_swing, K - 1, ...)``.

    Channels per swing axis are the kernel points ``j = -c..-1, +1..+c`` (the centre's swing is 0 and not predicted);
    ``Delta_{+j} = delta_{+1} + ... + delta_{+j}`` and ``Delta_{-j} = delta_{-1} + ... + delta_{-j}``.
    """
    c = kernel_size // 2
    # reshape with the traced sizes (not unflatten, whose trace fixes the batch size): graph capture uses this too
    d = delta.reshape(delta.shape[0], n_swing, kernel_size - 1, *delta.shape[2:])
    return torch.cat([d[:, :, :c].flip(2).cumsum(2).flip(2), d[:, :, c:].cumsum(2)], dim=2)


def cumulative_outer_backward(grad: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`cumulative_outer`: ``(B, n_swing, K - 1, ...)`` -> ``(B, n_swing * (K - 1), ...)``."""
    c = grad.shape[2] // 2
    # delta_{-i} feeds every Delta_{-j} with j >= i, delta_{+i} every Delta_{+j} with j >= i
    return torch.cat([grad[:, :, :c].cumsum(2), grad[:, :, c:].flip(2).cumsum(2).flip(2)], dim=2).flatten(1, 2)


def cumulative_swing(delta: torch.Tensor, n_swing: int, kernel_size: int) -> torch.Tensor:
    """Cumulative swing of all K points (the centre's is 0): ``(B, n_swing, K, ...)``."""
    outer = cumulative_outer(delta, n_swing, kernel_size)
    c = kernel_size // 2
    return torch.cat([outer[:, :, :c], torch.zeros_like(outer[:, :, :1]), outer[:, :, c:]], dim=2)


# ----------------------------------------------------------------------------------------------------------------
# layouts: positions as rows, weights split into outer points and centre
# ----------------------------------------------------------------------------------------------------------------
def to_rows(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` -> contiguous channels-last rows ``(B * N, C)``."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


class Rows(NamedTuple):
    """The sizes and row layout every back-end's forward and backward start from (:func:`rows_of`)."""

    batch: int
    c_in: int
    spatial: list[int]
    c_out: int
    kernel_size: int
    n: int  #: positions per batch element, ``prod(S)``
    x_rows: torch.Tensor  #: ``(B * N, C_in)``, contiguous channels-last rows
    x_pos: torch.Tensor  #: ``(B, N, C_in)``, a view of ``x_rows``
    delta_rows: torch.Tensor | None  #: ``(B, n_swing * (K - 1), N)``, contiguous, or None without swing


def rows_of(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor) -> Rows:
    """x ``(B, C_in, *S)``, delta ``(B, n_swing * (K - 1), *S)`` or None and weight ``(C_out, C_in, K)`` laid out
    as the back-ends compute on them."""
    batch, c_in, *spatial = x.shape
    c_out, _, kernel_size = weight.shape
    n = int(math.prod(spatial))
    x_rows = to_rows(x).contiguous()
    delta_rows = None if delta is None else delta.reshape(batch, -1, n).contiguous()
    return Rows(batch, c_in, spatial, c_out, kernel_size, n, x_rows, x_rows.view(batch, n, c_in), delta_rows)


def split_weight(weight: torch.Tensor):
    """``(C_out, C_in, K)`` -> outer points ``(C_out, (K - 1) * C_in)`` ordered (point, channel), centre ``(C_out,
    C_in)``, and all points ``(C_out, C_in, K)`` reordered outer points first, centre last."""
    k = weight.shape[2]
    c = k // 2
    order = [i for i in range(k) if i != c] + [c]
    w_perm = weight[:, :, order]
    return w_perm[:, :, :-1].transpose(1, 2).reshape(weight.shape[0], -1), weight[:, :, c], w_perm


def merge_weight_grad(grad_w_outer: torch.Tensor, grad_w_centre: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`split_weight` for gradients: outer ``(C_out, (K - 1) * C_in)`` ordered (point, channel)
    and centre ``(C_out, C_in)`` -> ``(C_out, C_in, K)`` in ``dtype``."""
    c_out, c_in = grad_w_centre.shape
    outer = grad_w_outer.view(c_out, -1, c_in).transpose(1, 2)
    c = outer.shape[2] // 2
    return torch.cat([outer[:, :, :c], grad_w_centre.unsqueeze(2), outer[:, :, c:]], dim=2).to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# chunks of positions
# ----------------------------------------------------------------------------------------------------------------
def split_range(n: int, per_position: int, max_elements: int) -> list[tuple[int, int]]:
    """Ranges ``(n0, n1)`` of about equal size covering ``n`` positions, each <= ``max_elements`` elements at
    ``per_position`` elements a position."""
    count = -(-n * max(per_position, 1) // max_elements)
    step = -(-n // count)
    return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


def chunks(n: int, per_position: int, scale: int = 1) -> list[tuple[int, int]]:
    """:func:`split_range` with at most ``scale *`` :data:`CHUNK_ELEMENTS` elements a chunk (the CPU paths)."""
    return split_range(n, per_position, CHUNK_ELEMENTS * scale)
