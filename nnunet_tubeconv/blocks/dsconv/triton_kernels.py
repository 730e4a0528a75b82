"""Triton kernels of the dynamic snake convolution (nnunet_tubeconv.blocks.dsconv): the interpolated reads of the
K - 1 outer kernel points, the swing gradient (with the samples again for the weight gradient) and the adjoint
scatter onto the interpolation corners. The GEMMs with the weights stay in PyTorch (cuBLAS).

Loaded by :mod:`nnunet_tubeconv.blocks.dsconv.triton_backend` twice at most, under two module names: compiled
(``triton.jit``, CUDA tensors) and interpreted (the same source under Triton's interpreter, CPU tensors; what the
tests run). No ``from __future__ import annotations`` here: Triton reads the ``tl.constexpr`` annotations.

Geometry and clamping are those of ``_Geometry.plan`` in torch_backend.py and of ``cpu_kernels.c``:
  morph axis a: coordinate clamp(p_a + j, 0, size_a - 1) (an exact integer, replicate padding);
  swing axis s: raw = p_s + scope * Delta_s; pos = clamp(raw, 0, size_s - 1);
                low = min(floor(pos), max(size_s - 2, 0)); frac = pos - low;
                inside = 0 <= raw <= size_s - 1 (no swing gradient from a clamped coordinate);
  value = sum over the 2^NSW corners of prod_s (frac_s or 1 - frac_s) * x[corner] (first swing axis outermost).
Spatial shapes are padded to 3D with leading sizes of 1 (AXIS, SW0, SW1 index the padded axes). Only the number of
swing axes, the feature dtype and the block sizes specialise a kernel (constexpr); the morph and swing axes, K and
the sizes are runtime arguments and the loop over the kernel points is not unrolled, so a network with snakes along
every axis compiles each kernel once per dtype and number of swing axes, in seconds.

Layouts (contiguous): x and gx (B, N, C) channels-last rows; delta and gdelta (B, NSW * (K - 1), N), the raw swing
per outer point (channels j = -c..-1, +1..+c per swing axis; the kernels sum it outward from the centre, always in
the same order, so every kernel sees bit-identical coordinates); s and gt (B * n, K - 1, C) for the chunk of
positions n0 .. n0 + n - 1, row r = b * n + (p - n0). Features may be fp32/bf16/fp16; coordinates, interpolation
weights and sums are float32; gx is float32 (atomic adds).
"""

import triton
import triton.language as tl


@triton.jit
def _sum(v, axis: tl.constexpr):
    # tl.reduce with Triton's own sum combiner: what tl.sum compiles to, and what the interpreter runs as np.sum.
    # tl.sum / tl.zeros themselves are @jit functions of triton.language, decorated when it was first imported
    # (not in interpreter mode here), so the kernels use only builtins and their own @jit helpers.
    return tl.reduce(v, axis, tl.standard._sum_combine)


@triton.jit
def _pick(v0, v1, v2, i):
    return tl.where(i == 0, v0, tl.where(i == 1, v1, v2))


@triton.jit
def _cum(delta_ptr, dbase, N, jj, K1, mask):
    """Cumulative swing of outer point jj along one swing axis, summed outward from the centre (float32), always
    in the same order, so every kernel computes the same coordinates."""
    half = K1 // 2
    acc = tl.full(dbase.shape, 0, tl.float32)
    if jj < half:
        for t in range(half - jj):
            acc += tl.load(delta_ptr + dbase + (half - 1 - t) * N, mask=mask, other=0.0).to(tl.float32)
    else:
        for t in range(jj - half + 1):
            acc += tl.load(delta_ptr + dbase + (half + t) * N, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _swing_axis(coord, size, stride, cum, scope):
    """Low-corner shift (rows), frac, inside flag and corner step of one swing axis."""
    raw = coord.to(tl.float32) + cum * scope
    maxpos = (size - 1).to(tl.float32)
    pos = tl.minimum(tl.maximum(raw, 0.0), maxpos)
    lo = tl.minimum(tl.floor(pos), tl.maximum(size - 2, 0).to(tl.float32))
    frac = pos - lo
    inside = (raw >= 0.0) & (raw <= maxpos)
    shift = (lo.to(tl.int64) - coord) * stride
    step = tl.where(size > 1, stride, 0)
    return shift, frac, inside, step


@triton.jit
def _point(delta_ptr, b, p, coords0, coords1, coords2, size0, size1, size2, N, scope, mask, jj, K1, AXIS, SW0, SW1,
           NSW: tl.constexpr):
    """Row of the low corner, fracs, inside flags and corner steps of outer point jj for a block of positions."""
    half = K1 // 2
    J = tl.where(jj < half, jj - half, jj - half + 1)
    stride0 = size1 * size2
    ca = _pick(coords0, coords1, coords2, AXIS)
    sa = _pick(size0, size1, size2, AXIS)
    st_a = _pick(stride0, size2, 1, AXIS)
    ca_j = tl.minimum(tl.maximum(ca + J, 0), sa - 1)
    low = b * N + p + (ca_j - ca) * st_a
    f0 = tl.full(p.shape, 0, tl.float32)
    f1 = tl.full(p.shape, 0, tl.float32)
    in0 = p >= 0
    in1 = p >= 0
    step0 = tl.full(p.shape, 0, tl.int64)
    step1 = tl.full(p.shape, 0, tl.int64)
    if NSW >= 1:
        cum0 = _cum(delta_ptr, (b * NSW) * K1 * N + p, N, jj, K1, mask)
        sh0, f0, in0, step0 = _swing_axis(_pick(coords0, coords1, coords2, SW0), _pick(size0, size1, size2, SW0),
                                          _pick(stride0, size2, 1, SW0), cum0, scope)
        low = low + sh0
    if NSW >= 2:
        cum1 = _cum(delta_ptr, (b * NSW + 1) * K1 * N + p, N, jj, K1, mask)
        sh1, f1, in1, step1 = _swing_axis(_pick(coords0, coords1, coords2, SW1), _pick(size0, size1, size2, SW1),
                                          _pick(stride0, size2, 1, SW1), cum1, scope)
        low = low + sh1
    return low, f0, f1, in0, in1, step0, step1


@triton.jit
def _positions(pid, n0, n, B, size1, size2, BLOCK_R: tl.constexpr):
    r = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    mask = r < B * n
    b = r // n
    p = n0 + r % n
    c2 = p % size2
    c1 = (p // size2) % size1
    c0 = p // (size1 * size2)
    return r, mask, b, p, c0, c1, c2


@triton.jit
def _corners(x_ptr, low, step0, step1, ch, mask2, C, NSW: tl.constexpr):
    """The 2^NSW corner tiles (BLOCK_R, BLOCK_C) as float32 (unused ones are the first corner again)."""
    v0 = tl.load(x_ptr + low[:, None] * C + ch[None, :], mask=mask2, other=0.0).to(tl.float32)
    v1 = v0
    v2 = v0
    v3 = v0
    if NSW == 1:
        v1 = tl.load(x_ptr + (low + step0)[:, None] * C + ch[None, :], mask=mask2, other=0.0).to(tl.float32)
    if NSW == 2:
        v1 = tl.load(x_ptr + (low + step1)[:, None] * C + ch[None, :], mask=mask2, other=0.0).to(tl.float32)
        v2 = tl.load(x_ptr + (low + step0)[:, None] * C + ch[None, :], mask=mask2, other=0.0).to(tl.float32)
        v3 = tl.load(x_ptr + (low + step0 + step1)[:, None] * C + ch[None, :], mask=mask2, other=0.0).to(tl.float32)
    return v0, v1, v2, v3


@triton.jit
def _interpolate(v0, v1, v2, v3, f0, f1, NSW: tl.constexpr):
    if NSW == 0:
        val = v0
    elif NSW == 1:
        val = (1.0 - f0)[:, None] * v0 + f0[:, None] * v1
    else:
        g0 = (1.0 - f0)[:, None]
        g1 = (1.0 - f1)[:, None]
        h0 = f0[:, None]
        h1 = f1[:, None]
        val = g0 * g1 * v0 + g0 * h1 * v1 + h0 * g1 * v2 + h0 * h1 * v3
    return val


@triton.jit
def sample_kernel(x_ptr, delta_ptr, s_ptr, scope, n0, n, B, N, C, size0, size1, size2,
                  K1, AXIS, SW0, SW1, NSW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """s[r, jj, :] = interpolated x at outer point jj. Grid: (position blocks, channel blocks)."""
    r, mask, b, p, c0, c1, c2 = _positions(tl.program_id(0), n0, n, B, size1, size2, BLOCK_R)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask2 = mask[:, None] & (ch < C)[None, :]
    for jj in range(K1):
        low, f0, f1, _in0, _in1, step0, step1 = _point(delta_ptr, b, p, c0, c1, c2, size0, size1, size2, N, scope,
                                                       mask, jj, K1, AXIS, SW0, SW1, NSW)
        v0, v1, v2, v3 = _corners(x_ptr, low, step0, step1, ch, mask2, C, NSW)
        val = _interpolate(v0, v1, v2, v3, f0, f1, NSW)
        tl.store(s_ptr + (r * K1 + jj)[:, None] * C + ch[None, :], val.to(s_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def _gather_point(x_ptr, delta_ptr, gt_ptr, s_ptr, gdelta_ptr, scope, r, mask, b, p, c0, c1, c2, N, C, size0, size1,
                  size2, run0, run1, jj, K1, AXIS, SW0, SW1, NSW: tl.constexpr, STORE_S: tl.constexpr,
                  GRAD_DELTA: tl.constexpr, BLOCK_C: tl.constexpr):
    """Outer point jj of :func:`gather_backward_kernel`; returns the running sums of the swing gradient."""
    low, f0, f1, in0, in1, step0, step1 = _point(delta_ptr, b, p, c0, c1, c2, size0, size1, size2, N, scope, mask,
                                                 jj, K1, AXIS, SW0, SW1, NSW)
    acc0 = tl.full(p.shape, 0, tl.float32)
    acc1 = tl.full(p.shape, 0, tl.float32)
    for cs in range(0, C, BLOCK_C):
        ch = cs + tl.arange(0, BLOCK_C)
        mask2 = mask[:, None] & (ch < C)[None, :]
        v0, v1, v2, v3 = _corners(x_ptr, low, step0, step1, ch, mask2, C, NSW)
        row = (r * K1 + jj)[:, None] * C + ch[None, :]
        if STORE_S:
            val = _interpolate(v0, v1, v2, v3, f0, f1, NSW)
            tl.store(s_ptr + row, val.to(s_ptr.dtype.element_ty), mask=mask2)
        if GRAD_DELTA:
            g = tl.load(gt_ptr + row, mask=mask2, other=0.0).to(tl.float32)
            if NSW == 1:
                acc0 += _sum((v1 - v0) * g, 1)
            if NSW == 2:
                g0 = (1.0 - f0)[:, None]
                g1 = (1.0 - f1)[:, None]
                h0 = f0[:, None]
                h1 = f1[:, None]
                acc0 += _sum((g1 * (v2 - v0) + h1 * (v3 - v1)) * g, 1)
                acc1 += _sum((g0 * (v1 - v0) + h0 * (v3 - v2)) * g, 1)
    if GRAD_DELTA:
        if NSW >= 1:
            run0 += tl.where(in0, acc0, 0.0)
            tl.store(gdelta_ptr + (b * NSW) * K1 * N + jj * N + p, scope * run0, mask=mask)
        if NSW >= 2:
            run1 += tl.where(in1, acc1, 0.0)
            tl.store(gdelta_ptr + (b * NSW + 1) * K1 * N + jj * N + p, scope * run1, mask=mask)
    return run0, run1


@triton.jit
def gather_backward_kernel(x_ptr, delta_ptr, gt_ptr, s_ptr, gdelta_ptr, scope, n0, n, B, N, C, size0, size1, size2,
                           K1, AXIS, SW0, SW1, NSW: tl.constexpr, STORE_S: tl.constexpr, GRAD_DELTA: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """The samples again (STORE_S) and the swing gradient (GRAD_DELTA): gdelta = scope * adjoint of the outward
    cumulative sum of inside_s * < d value / d frac_s, gt[r, jj, :] >. Grid: (position blocks,); each program
    loops over all channels, so the channel sum needs no atomics. Points are visited outermost first on each side,
    so the adjoint of the cumulative sum is a running sum."""
    half = K1 // 2
    r, mask, b, p, c0, c1, c2 = _positions(tl.program_id(0), n0, n, B, size1, size2, BLOCK_R)
    run0 = tl.full(p.shape, 0, tl.float32)
    run1 = tl.full(p.shape, 0, tl.float32)
    for jj in range(half):  # j = -c .. -1
        run0, run1 = _gather_point(x_ptr, delta_ptr, gt_ptr, s_ptr, gdelta_ptr, scope, r, mask, b, p, c0, c1, c2, N,
                                   C, size0, size1, size2, run0, run1, jj, K1, AXIS, SW0, SW1, NSW, STORE_S,
                                   GRAD_DELTA, BLOCK_C)
    run0 = tl.full(p.shape, 0, tl.float32)
    run1 = tl.full(p.shape, 0, tl.float32)
    for t in range(K1 - half):  # j = +c .. +1
        run0, run1 = _gather_point(x_ptr, delta_ptr, gt_ptr, s_ptr, gdelta_ptr, scope, r, mask, b, p, c0, c1, c2, N,
                                   C, size0, size1, size2, run0, run1, K1 - 1 - t, K1, AXIS, SW0, SW1, NSW, STORE_S,
                                   GRAD_DELTA, BLOCK_C)


@triton.jit
def scatter_kernel(gx_ptr, delta_ptr, gt_ptr, scope, n0, n, B, N, C, size0, size1, size2,
                   K1, AXIS, SW0, SW1, NSW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """gx[corner, :] += w_q * gt[r, jj, :] (float32 atomic adds: corners of different positions, and of one
    position at a clamped border or on a size-1 axis, coincide). Grid: (position blocks, channel blocks)."""
    r, mask, b, p, c0, c1, c2 = _positions(tl.program_id(0), n0, n, B, size1, size2, BLOCK_R)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask2 = mask[:, None] & (ch < C)[None, :]
    for jj in range(K1):
        low, f0, f1, _in0, _in1, step0, step1 = _point(delta_ptr, b, p, c0, c1, c2, size0, size1, size2, N, scope,
                                                       mask, jj, K1, AXIS, SW0, SW1, NSW)
        g = tl.load(gt_ptr + (r * K1 + jj)[:, None] * C + ch[None, :], mask=mask2, other=0.0).to(tl.float32)
        if NSW == 0:
            tl.atomic_add(gx_ptr + low[:, None] * C + ch[None, :], g, mask=mask2)
        elif NSW == 1:
            tl.atomic_add(gx_ptr + low[:, None] * C + ch[None, :], (1.0 - f0)[:, None] * g, mask=mask2)
            tl.atomic_add(gx_ptr + (low + step0)[:, None] * C + ch[None, :], f0[:, None] * g, mask=mask2)
        else:
            g0 = (1.0 - f0)[:, None]
            g1 = (1.0 - f1)[:, None]
            h0 = f0[:, None]
            h1 = f1[:, None]
            tl.atomic_add(gx_ptr + low[:, None] * C + ch[None, :], g0 * g1 * g, mask=mask2)
            tl.atomic_add(gx_ptr + (low + step1)[:, None] * C + ch[None, :], g0 * h1 * g, mask=mask2)
            tl.atomic_add(gx_ptr + (low + step0)[:, None] * C + ch[None, :], h0 * g1 * g, mask=mask2)
            tl.atomic_add(gx_ptr + (low + step0 + step1)[:, None] * C + ch[None, :], h0 * h1 * g, mask=mask2)
