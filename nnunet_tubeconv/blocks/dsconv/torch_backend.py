"""DSConv's snake convolution in PyTorch operations: the path for every device and dtype the compiled kernels do not
take (CPU without a C compiler, bf16/fp16 on CPU, CUDA without Triton, other devices).

Chunk by chunk of positions: the ``K - 1`` outer samples of every position come from one ``embedding_bag`` (fused
gather + interpolation, ``(B*n, (K-1)*C_in)``) and are contracted with ``W`` by one GEMM, the centre by another.
Backward recomputes the samples for the weight gradient, scatters ``W^T g`` onto each interpolation corner
(``scatter_add_``, int64 indices) for the input gradient, and reads the swing gradient from the forward
differences of ``x`` along each swing axis (``embedding_bag`` again). :func:`forward` / :func:`backward` have the
interface of the other back-ends (``cpu_backend``, ``triton_backend``); ``function.SnakeConvFunction`` chooses.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nnunet_tubeconv.blocks.dsconv.maths import (
    chunks,
    cumulative_outer,
    cumulative_outer_backward,
    merge_weight_grad,
    rows_of,
    split_weight,
)
from nnunet_tubeconv.blocks.utils import numel

__all__ = ["backward", "forward"]


class _Geometry:
    """Integer coordinates of every flat position of one spatial shape, and the gather plan of a chunk of them.

    The centre point reads ``x`` itself. The value of each of the ``K - 1`` outer points is the weighted sum
    (``embedding_bag``) of its ``Q = 2^n_swing`` interpolation corners, read as rows of the channels-last copy
    ``(B * N, C)`` of ``x``: one fused gather + interpolation for all points of a chunk. Row indices include the
    sample's batch offset ``b * N``, so the samples of a batch never mix, and are int64, so no index loses
    exactness on large volumes.
    """

    def __init__(self, batch: int, spatial: Sequence[int], axis: int, swing_axes: Sequence[int], kernel_size: int,
                 device):
        self.batch = batch
        self.spatial = tuple(int(s) for s in spatial)
        self.n = numel(spatial)
        self.axis = axis
        self.swing_axes = tuple(swing_axes)
        self.strides = [numel(spatial[i + 1 :]) for i in range(len(spatial))]
        flat = torch.arange(self.n, device=device, dtype=torch.int64)
        self.coords = [(flat // st) % s for st, s in zip(self.strides, self.spatial)]  # per axis, (N,)
        c = kernel_size // 2
        self.j = torch.cat([torch.arange(-c, 0), torch.arange(1, c + 1)]).to(device)  # the outer points
        self.batch_offset = (torch.arange(batch, device=device, dtype=torch.int64) * self.n).view(-1, 1, 1)
        # flat-index step from the low to the high interpolation corner along each swing axis (0 on a size-1 axis)
        self.steps = [self.strides[s] if self.spatial[s] > 1 else 0 for s in self.swing_axes]
        n_sw = len(self.swing_axes)
        corners = list(itertools.product((0, 1), repeat=n_sw))  # first swing axis outermost
        self.corner_steps = self._steps_tensor(corners, device)
        self.corner_steps_list = self._steps_list(corners)
        # corners of the other swing axes, for the derivative along each swing axis
        self.other_steps = [
            self._steps_tensor([bits for bits in corners if bits[s] == 0], device) for s in range(n_sw)
        ]
        if n_sw:
            sizes = [self.spatial[s] for s in self.swing_axes]
            self.coord_swing = torch.stack([self.coords[s] for s in self.swing_axes]).view(n_sw, 1, -1, 1)
            self.max_pos = torch.tensor([s - 1.0 for s in sizes], device=device).view(-1, 1, 1, 1)
            self.max_low = torch.tensor([max(s - 2, 0) for s in sizes], device=device, dtype=torch.float32)
            self.max_low = self.max_low.view(-1, 1, 1, 1)
            self.stride_swing = torch.tensor([self.strides[s] for s in self.swing_axes], device=device)
            self.stride_swing = self.stride_swing.view(-1, 1, 1, 1)

    def _steps_list(self, corners) -> list[int]:
        return [sum(b * st for b, st in zip(bits, self.steps)) for bits in corners]

    def _steps_tensor(self, corners, device) -> torch.Tensor:
        return torch.tensor(self._steps_list(corners), device=device, dtype=torch.int64)

    def chunks(self, per_position: int) -> list[tuple[int, int]]:
        return chunks(self.n, per_position)

    def plan(self, n0: int, n1: int, offsets: torch.Tensor | None):
        """Gather plan of the ``K - 1`` outer points for the positions ``n0 .. n1 - 1`` (``n`` of them).

        ``offsets``: ``(n_swing, B, n, K - 1)`` swing in voxels (scaled by extend_scope) or None.
        Returns ``(low, fracs, inside)``: ``low`` ``(B, n, K - 1)`` int64 row index of the low corner in
        ``(B * N, C)`` (corner ``q`` at ``low + corner_steps[q]``); ``fracs`` ``(n_swing, B, n, K - 1)``
        interpolation fractions and ``inside`` a bool of that shape, False where the unclamped coordinate left the
        volume (no swing gradient there).
        """
        a = self.axis
        base = torch.arange(n0, n1, device=self.j.device, dtype=torch.int64).unsqueeze(1)
        coord_a = self.coords[a][n0:n1].unsqueeze(1)
        # the coordinate along the morph axis is an exact integer: clamping it is replicate padding
        low = base + ((coord_a + self.j).clamp_(0, self.spatial[a] - 1) - coord_a) * self.strides[a]
        low = low + self.batch_offset
        if offsets is None:
            return low, None, None
        coord = self.coord_swing[:, :, n0:n1]
        raw = coord.to(offsets.dtype) + offsets
        max_pos = self.max_pos.to(raw.dtype)
        pos = torch.minimum(raw.clamp(min=0.0), max_pos)
        low_s = torch.minimum(pos.floor(), self.max_low.to(raw.dtype))
        inside = (raw >= 0) & (raw <= max_pos)
        shift = (low_s.to(torch.int64) - coord) * self.stride_swing
        for s in range(shift.shape[0]):
            low = low + shift[s]
        return low, pos - low_s, inside

    @staticmethod
    def corner_weights(fracs: torch.Tensor | None, skip: int = -1, dim: int = -1) -> torch.Tensor | None:
        """Products of ``1 - frac`` / ``frac`` over the swing axes, one per corner, stacked along ``dim``.

        ``fracs``: ``(n_swing, *shape)`` -> ``(*shape, Q)`` (``dim=-1``) in corner order. With ``skip = s`` axis
        ``s`` is left out (``Q / 2`` corners): the weights of the derivative along ``s``, read from the forward
        difference table of ``x`` along ``s``. None stands for a single corner of weight 1.
        """
        if fracs is None:
            return None
        factors = [(1.0 - fracs[s], fracs[s]) for s in range(fracs.shape[0]) if s != skip]
        if not factors:
            return None
        ws = []
        for bits in itertools.product((0, 1), repeat=len(factors)):
            w = factors[0][bits[0]]
            for f, bit in zip(factors[1:], bits[1:]):
                w = w * f[bit]
            ws.append(w)
        return torch.stack(ws, dim=dim)


def _embedding_rows(table: torch.Tensor, low: torch.Tensor, steps: torch.Tensor, weights: torch.Tensor | None):
    """``(B * n * (K - 1), C)``: per sample, the weighted sum of the rows ``low + steps[q]`` of ``table``."""
    q = steps.numel()
    idx = (low.unsqueeze(-1) + steps).view(-1, q)
    w = None if weights is None else weights.reshape(-1, q).to(table.dtype)
    if w is None and q > 1:
        w = torch.ones(idx.shape, device=table.device, dtype=table.dtype)
    return F.embedding_bag(idx, table, per_sample_weights=w, mode="sum")


def _all_offsets(delta: torch.Tensor | None, n_swing: int, kernel_size: int, scale: float) -> torch.Tensor | None:
    """Cumulative swing of the outer points in voxels: ``(B, n_swing*(K-1), N)`` -> ``(n_swing, B, N, K - 1)`` view."""
    if delta is None:
        return None
    return (cumulative_outer(delta, n_swing, kernel_size) * scale).permute(1, 0, 3, 2)


def _difference_rows(x_rows: torch.Tensor, step: int) -> torch.Tensor:
    """Forward difference ``x[r + step] - x[r]`` of the rows (0 where it would leave the table or ``step == 0``).

    Rows whose coordinate along the axis is the last one hold a meaningless difference; the plan never reads them,
    as the low interpolation corner is at most ``size - 2`` along every swing axis of size >= 2.
    """
    out = torch.zeros_like(x_rows)
    if step:
        torch.sub(x_rows[step:], x_rows[:-step], out=out[:-step])
    return out


def forward(x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float) -> torch.Tensor:
    """``y = sum_j W_j . interp(x, point_j) + b``. x: ``(B, C_in, *S)``; delta: ``(B, n_swing * (K - 1), *S)`` or
    None; weight: ``(C_out, C_in, K)``; bias: ``(C_out,)`` or None."""
    with torch.autocast(x.device.type, enabled=False):
        batch, c_in, spatial, c_out, kernel_size, _, x_rows, x_pos, delta_f = rows_of(x, delta, weight)
        geo = _Geometry(batch, spatial, axis, swing_axes, kernel_size, x.device)
        w_outer, w_centre, _ = split_weight(weight)
        w_outer_t, w_centre_t = w_outer.t(), w_centre.t()
        offsets_all = _all_offsets(delta_f, len(swing_axes), kernel_size, extend_scope)
        y = torch.empty(batch, c_out, geo.n, device=x.device, dtype=x.dtype)
        for n0, n1 in geo.chunks(batch * kernel_size * c_in):
            x_c = x_pos[:, n0:n1].reshape(-1, c_in)
            yc = x_c @ w_centre_t if bias is None else torch.addmm(bias, x_c, w_centre_t)
            if kernel_size > 1:
                offsets = None if offsets_all is None else offsets_all[:, :, n0:n1]
                low, fracs, _ = geo.plan(n0, n1, offsets)
                s = _embedding_rows(x_rows, low, geo.corner_steps, geo.corner_weights(fracs))
                yc.addmm_(s.view(yc.shape[0], -1), w_outer_t)
            y[:, :, n0:n1] = yc.view(batch, n1 - n0, c_out).transpose(1, 2)
    return y.view(batch, c_out, *spatial)


def backward(grad_out, x, delta, weight, has_bias: bool, axis: int, swing_axes: tuple[int, ...],
             extend_scope: float, needs: tuple[bool, bool, bool, bool]):
    """Gradients ``(grad_x, grad_delta, grad_weight, grad_bias)`` of :func:`forward` (None where ``needs`` says so;
    ``needs[1]`` is False when ``delta`` is None)."""
    need_x, need_delta, need_w, need_b = needs
    with torch.autocast(x.device.type, enabled=False):
        batch, c_in, spatial, c_out, kernel_size, _, x_rows, x_pos, delta_f = rows_of(x, delta, weight)
        geo = _Geometry(batch, spatial, axis, swing_axes, kernel_size, x.device)
        g = grad_out.to(x.dtype).reshape(batch, c_out, geo.n)
        acc = torch.promote_types(x.dtype, torch.float32)
        w_outer, _, w_perm = split_weight(weight)
        # (B, C_in * K, C_out), rows ordered (channel, point) with the centre point last
        w_col = w_perm.reshape(c_out, c_in * kernel_size).t().expand(batch, -1, -1)
        grad_xf = torch.zeros(batch, c_in, geo.n, device=x.device, dtype=acc) if need_x else None
        grad_w_outer = torch.zeros(c_out, (kernel_size - 1) * c_in, device=x.device, dtype=acc)
        grad_w_centre = torch.zeros(c_out, c_in, device=x.device, dtype=acc)
        offsets_all = _all_offsets(delta_f, len(swing_axes), kernel_size, extend_scope)
        grad_offsets = torch.empty_like(offsets_all) if need_delta else None  # (n_swing, B, N, K - 1)
        diffs = [_difference_rows(x_rows, st) for st in geo.steps] if need_delta else []
        buf = None
        for n0, n1 in geo.chunks(batch * kernel_size * c_in):
            n = n1 - n0
            offsets = None if offsets_all is None else offsets_all[:, :, n0:n1]
            low, fracs, inside = geo.plan(n0, n1, offsets)
            weights = geo.corner_weights(fracs)  # (B, n, K - 1, Q)
            g_chunk = g[:, :, n0:n1]
            g_rows = g_chunk.transpose(1, 2).reshape(batch * n, c_out)
            if need_w:
                grad_w_centre += (g_rows.t() @ x_pos[:, n0:n1].reshape(-1, c_in)).to(acc)
                s = _embedding_rows(x_rows, low, geo.corner_steps, weights).view(batch * n, -1)
                grad_w_outer += (g_rows.t() @ s).to(acc)
            if need_x:
                # W^T g of every sample, (B, C_in, K, n) with the centre last: the centre's goes straight to
                # its own position, the others onto each interpolation corner with its weight
                gt = torch.bmm(w_col, g_chunk).view(batch, c_in, kernel_size, n).to(acc)
                grad_xf[:, :, n0:n1] += gt[:, :, -1]
                gt = gt[:, :, :-1]
                low_t = (low.transpose(1, 2) - geo.batch_offset).contiguous()  # (B, K - 1, n) spatial index
                w_t = None
                if fracs is not None:  # (B, Q, K - 1, n)
                    w_t = geo.corner_weights(fracs.transpose(2, 3).contiguous(), dim=1).to(acc)
                # all corners at once: (B, C_in, Q, K - 1, n), one multiply and one scatter
                src = gt.unsqueeze(2)
                if w_t is not None:
                    size = gt.numel() * w_t.shape[1]
                    if buf is None or buf.numel() < size:
                        buf = torch.empty(size, device=x.device, dtype=acc)
                    src = torch.mul(src, w_t.unsqueeze(1), out=buf[:size].view(batch, c_in, *w_t.shape[1:]))
                idx = low_t.unsqueeze(1) + geo.corner_steps.view(-1, 1, 1)  # (B, Q, K - 1, n)
                grad_xf.scatter_add_(2, idx.view(batch, 1, -1).expand(batch, c_in, -1), src.reshape(batch, c_in, -1))
            if need_delta:
                gt_rows = (g_rows @ w_outer).view(-1, c_in, 1)  # (B*n*(K-1), C_in, 1): W^T g of every sample
                for s in range(len(swing_axes)):
                    d_s = _embedding_rows(diffs[s], low, geo.other_steps[s], geo.corner_weights(fracs, skip=s))
                    dfrac = torch.bmm(d_s.unsqueeze(1), gt_rows).view(batch, n, -1).to(offsets.dtype)
                    torch.mul(dfrac, inside[s], out=grad_offsets[s, :, n0:n1])
        grad_x = grad_xf.view(x.shape).to(x.dtype) if need_x else None
        grad_w = None
        if need_w:
            grad_w = merge_weight_grad(grad_w_outer, grad_w_centre, weight.dtype)
        grad_d = None
        if need_delta:
            grad_d = cumulative_outer_backward(grad_offsets.permute(1, 0, 3, 2) * extend_scope)
            grad_d = grad_d.view(delta.shape).to(delta.dtype)
        grad_b = g.sum((0, 2)).to(weight.dtype) if (need_b and has_bias) else None
    return grad_x, grad_d, grad_w, grad_b

