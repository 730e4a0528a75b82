"""Compiled CPU kernels of DSConv and scSE (``cpu_kernels.c``): built on first use, called through ctypes; and
DSConv's forward and backward on them (:func:`forward`, :func:`backward`).

Why: on CPU, DSConv's interpolated reads, their adjoint scatter and the swing gradient are a few dozen small passes
over ``K``-times enlarged data when written as PyTorch operations, and scSE's gates a dozen full-size passes; fused
into one C loop each they cost several times less (``nnunet-tubeconv bench-blocks``). The source is plain C (no
PyTorch headers, no pybind11), so the build takes 1-2 s with the system C compiler. Built with
``-fopenmp``, the loops run on the OpenMP runtime PyTorch has already loaded (``libgomp.so.1`` resolves to the
loaded copy), so they share its threads instead of fighting its spinning workers for the cores; without OpenMP, a
pool of ``torch.get_num_threads()`` Python threads runs disjoint work ranges (ctypes releases the GIL). Work is
split so that no two threads write the same element (no atomics).

The library is cached under ``$NNUNET_TUBECONV_CACHE`` (default ``~/.cache/nnunet_tubeconv``), keyed by the source,
the compiler, the flags and the CPU (the build uses ``-march=native``), and written atomically, so concurrent
processes (DDP ranks, test workers) are safe. Without a C compiler, or with ``NNUNET_TUBECONV_NATIVE=0``, the blocks
use their PyTorch implementation, which gives the same results (every block test runs both) more slowly; bf16/fp16
and autocast on CPU always take the PyTorch path, CUDA tensors DSConv's Triton kernels (:mod:`.triton_backend`) or,
without Triton, the PyTorch path (:mod:`.torch_backend`). :func:`status` says which one runs and why
(``nnunet-tubeconv doctor`` prints it).

The scSE block (``nnunet_tubeconv.blocks.scse``) uses the same library (:func:`scse_add_kernels`): one C source,
one build, one cache entry.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from nnunet_tubeconv.blocks.dsconv.maths import chunks, merge_weight_grad, rows_of, split_weight

__all__ = [
    "NATIVE_CHUNK_SCALE",
    "ScseAddKernels",
    "SnakeKernels",
    "available",
    "backward",
    "forward",
    "kernels",
    "linear",
    "onednn_linear",
    "scse_add_kernels",
    "set_linear_op",
    "status",
]

_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno"]
_lock = threading.Lock()
_state: dict = {}  # "lib" (ctypes.CDLL | None) and "reason" (str), set once per process
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _cpu_signature() -> str:
    """The CPU model and feature flags: part of the cache key, as the build uses ``-march=native``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _accepted(cc: str, flag: str) -> bool:
    probe = subprocess.run([cc, flag, "-x", "c", "-c", "-", "-o", os.devnull], input=b"int f(void) { return 0; }\n",
                           capture_output=True, check=False)
    return probe.returncode == 0


def _optional_flags(cc: str) -> list[str]:
    """``-march=native`` (loops vectorised for this CPU) and ``-fopenmp`` where the compiler accepts them."""
    return [flag for flag in ("-march=native", "-fopenmp") if _accepted(cc, flag)]


def _disabled() -> bool:
    return os.environ.get("NNUNET_TUBECONV_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _build() -> tuple[ctypes.CDLL | None, str]:
    if _disabled():
        return None, "disabled by NNUNET_TUBECONV_NATIVE=0"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc/clang)"
    optional = _optional_flags(cc)
    lib, reason = _build_with(cc, _FLAGS + optional)
    if lib is None and "-fopenmp" in optional:  # e.g. no libgomp to link: Python threads instead
        lib, reason = _build_with(cc, _FLAGS + [f for f in optional if f != "-fopenmp"])
    return lib, reason


def _build_with(cc: str, flags: list[str]) -> tuple[ctypes.CDLL | None, str]:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(flags).encode(), platform.machine().encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    cache = Path(os.environ.get("NNUNET_TUBECONV_CACHE") or Path.home() / ".cache" / "nnunet_tubeconv")
    target = cache / f"cpu_kernels_{key}.so"
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
            os.close(fd)
            proc = subprocess.run([cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                os.unlink(tmp)
                return None, f"compiling {_SOURCE.name} with {cc} failed: {proc.stderr.strip()[:500]}"
            os.replace(tmp, target)  # atomic: a concurrent process sees the old state or the whole library
        except OSError as exc:
            return None, f"cannot build the CPU kernels in {cache}: {exc} (set NNUNET_TUBECONV_CACHE)"
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        return None, f"cannot load {target}: {exc}"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suf, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        getattr(lib, f"snake_sample_{suf}").argtypes = [ptr, ptr, real, ptr, ptr, i64, i64, i64, i64]
        getattr(lib, f"snake_gather_backward_{suf}").argtypes = [ptr, ptr, real, ptr, ptr, ptr, ptr, i64, i64, i64,
                                                                 i64]
        getattr(lib, f"snake_scatter_{suf}").argtypes = [ptr, ptr, real, ptr, ptr, i64, i64, i64, i64, i64]
        for name in ("snake_sample", "snake_gather_backward", "snake_scatter"):
            getattr(lib, f"{name}_{suf}").restype = None
    for suf, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        getattr(lib, f"scse_add_forward_{suf}").argtypes = [ptr, ptr, real, ptr, ptr, ptr, i64, i64, i64, i64, i64]
        getattr(lib, f"scse_add_backward1_{suf}").argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64]
        getattr(lib, f"scse_add_backward2_{suf}").argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64,
                                                              i64]
        for name in ("scse_add_forward", "scse_add_backward1", "scse_add_backward2"):
            getattr(lib, f"{name}_{suf}").restype = None
    lib.tubeconv_openmp = "-fopenmp" in flags
    return lib, f"compiled CPU kernels ({' '.join(flags)}) at {target}"


def _library() -> ctypes.CDLL | None:
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                lib, reason = _build()
                if lib is None and not _disabled():
                    warnings.warn(f"DSConv and scSE run their slower PyTorch implementation on CPU: {reason}",
                                  stacklevel=3)
                _state["lib"], _state["reason"] = lib, reason
    return _state["lib"]


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the compiled CPU kernels loaded (built on first call); a constant to ``torch.compile``."""
    return _library() is not None


def status() -> str:
    """One line: whether the CPU kernels are in use, and why (``nnunet-tubeconv doctor`` prints it)."""
    lib = _library()
    return ("native: " if lib is not None else "PyTorch fallback: ") + _state["reason"]


def _run_parallel(calls: list) -> None:
    """Run the zero-argument callables on ``torch.get_num_threads()`` threads (ctypes releases the GIL)."""
    global _pool, _pool_size
    threads = max(1, torch.get_num_threads())
    if threads == 1 or len(calls) == 1:
        for call in calls:
            call()
        return
    with _lock:
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nnunet-tubeconv-snake")
            _pool_size = threads
        pool = _pool
    for future in [pool.submit(call) for call in calls]:
        future.result()


def _ranges(total: int, parts: int) -> list[tuple[int, int]]:
    step = -(-total // max(1, parts))
    return [(i, min(total, i + step)) for i in range(0, total, step)]


def _split(openmp: bool, total: int, call) -> None:
    """``call(r0, r1)`` over ``0 .. total - 1``: one call (OpenMP splits it) or one range per Python thread."""
    if openmp:
        call(0, total)
    else:
        threads = max(1, torch.get_num_threads())
        _run_parallel([(lambda r0=r0, r1=r1: call(r0, r1)) for r0, r1 in _ranges(total, threads)])


def onednn_linear():
    """PyTorch's oneDNN (mkldnn) linear operator, or None where this build lacks it or it fails a probe: the operator
    :func:`linear` runs float32 products with (unless :func:`set_linear_op` chose another).

    Why: DSConv's contractions with its weights are GEMMs of ``(B * n, (K - 1) * C_in) x ((K - 1) * C_in, C_out)``.
    ``torch.mm`` / ``addmm`` run them in MKL's sgemm, which on the AMD EPYC development machine reached 74-86
    GFLOP/s per core against 171-181 GFLOP/s for oneDNN's linear, the library nnU-Net's own convolutions run on
    (``python -m nnunet_tubeconv.benchmarks.studies.snake_cost.profile_snake``). Same products, summed in another
    order: results equal to float32 rounding (``tests/unit/test_snake_network_paths.py``). ``NNUNET_TUBECONV_ONEDNN=0``
    keeps ``torch.mm`` (the GEMMs before oneDNN was used, for before/after measurements).
    """
    if "linear" not in _state:
        op = None
        off = os.environ.get("NNUNET_TUBECONV_ONEDNN", "1").strip().lower() in ("0", "false", "no", "off")
        try:
            if not off and torch.backends.mkldnn.is_available():
                candidate = torch.ops.mkldnn._linear_pointwise.default
                a, w = torch.randn(3, 5), torch.randn(4, 5)
                if torch.allclose(candidate(a, w, None, "none", [], ""), a @ w.t(), rtol=1e-4, atol=1e-5):
                    op = candidate
        except (AttributeError, RuntimeError):
            op = None
        _state["linear"] = op
    return _state["linear"]


def set_linear_op(op) -> None:
    """Make :func:`linear` run float32 products with ``op`` (``onednn_linear()``'s operator, or None for
    ``torch.mm``) from now on in this process: for before/after measurements of the GEMMs (``profile_snake``)."""
    _state["linear"] = op



def linear(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ w.T (+ bias)`` for 2-D CPU tensors: oneDNN for float32 where available (any strides), else
    ``torch.addmm`` / ``torch.mm``. Inputs are not differentiated through (called inside autograd Functions)."""
    op = onednn_linear() if a.dtype == torch.float32 and w.dtype == torch.float32 else None
    if op is not None:
        return op(a, w, bias, "none", [], "")
    return torch.mm(a, w.t()) if bias is None else torch.addmm(bias, a, w.t())


class SnakeKernels:
    """The three kernels for one (shape, axis, swing axes, K) and dtype; tensors must be contiguous CPU tensors:
    ``x_rows`` / ``gx_rows`` ``(B, N, C)``, ``delta`` ``(B, n_swing * (K - 1), N)`` (the raw swing, None for none),
    ``out`` / ``s_out`` / ``gt`` ``(B * n, (K - 1) * C)`` for the chunk ``n0 .. n1 - 1``."""

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype, batch: int, spatial, axis: int, swing_axes,
                 kernel_size: int, channels: int):
        suf = "f32" if dtype == torch.float32 else "f64"
        self._sample = getattr(lib, f"snake_sample_{suf}")
        self._gather = getattr(lib, f"snake_gather_backward_{suf}")
        self._scatter = getattr(lib, f"snake_scatter_{suf}")
        pad = 3 - len(spatial)
        size = [1] * pad + [int(s) for s in spatial]
        stride = [1] * 3
        for i in (1, 0):
            stride[i] = stride[i + 1] * size[i + 1]
        sw = [s + pad for s in swing_axes] + [0] * (2 - len(swing_axes))
        n = size[0] * size[1] * size[2]
        geometry = size + stride + [axis + pad, len(swing_axes)] + sw + [kernel_size, n, channels, batch]
        self._gi = torch.tensor(geometry, dtype=torch.int64)  # kept alive: the C code reads it by pointer
        self.batch, self.channels = batch, channels
        self.threads = max(1, torch.get_num_threads())
        self.openmp = lib.tubeconv_openmp

    def sample(self, x_rows: torch.Tensor, delta: torch.Tensor | None, scope: float, out: torch.Tensor, n0: int,
               n1: int):
        """``out`` ``(B, n, K - 1, C)`` <- interpolated outer points of positions ``n0 .. n1 - 1``."""
        off_p = None if delta is None else delta.data_ptr()
        _split(self.openmp, self.batch * (n1 - n0), lambda r0, r1: self._sample(
            x_rows.data_ptr(), off_p, scope, out.data_ptr(), self._gi.data_ptr(), n0, n1, r0, r1))

    def gather_backward(self, x_rows, delta, scope, gt, s_out, grad_delta, n0: int, n1: int):
        """``s_out`` (or None) <- the samples again; ``grad_delta`` (or None) <- the swing gradient of the chunk's
        positions (a full-size ``(B, n_swing * (K - 1), N)`` tensor)."""
        off_p = None if delta is None else delta.data_ptr()
        s_p = None if s_out is None else s_out.data_ptr()
        g_p = None if grad_delta is None else grad_delta.data_ptr()
        _split(self.openmp, self.batch * (n1 - n0), lambda r0, r1: self._gather(
            x_rows.data_ptr(), off_p, scope, gt.data_ptr(), s_p, g_p, self._gi.data_ptr(), n0, n1, r0, r1))

    def scatter(self, gx_rows, delta, scope, gt, n0: int, n1: int):
        """``gx_rows`` ``(B, N, C)`` += the adjoint of :meth:`sample` applied to ``gt``."""
        off_p = None if delta is None else delta.data_ptr()

        def call(b0, b1, blocks):
            self._scatter(gx_rows.data_ptr(), off_p, scope, gt.data_ptr(), self._gi.data_ptr(), n0, n1, b0, b1, blocks)

        if self.openmp:  # tasks (batch element, channel range), at least one per thread
            call(0, self.batch, max(1, min(self.channels, -(-self.threads // self.batch))))
        else:  # a Python thread per batch element
            _run_parallel([(lambda b=b: call(b, b + 1, 1)) for b in range(self.batch)])


def kernels(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, axis: int, swing_axes
) -> SnakeKernels | None:
    """The CPU kernels for this call, or None where the PyTorch implementation must run (not a CPU tensor, a dtype
    other than float32/float64, mixed dtypes, or no compiled library)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype:
        return None
    if delta is not None and delta.dtype != x.dtype:
        return None
    lib = _library()
    if lib is None:
        return None
    batch, channels, *spatial = x.shape
    return SnakeKernels(lib, x.dtype, batch, spatial, axis, swing_axes if delta is not None else (), weight.shape[2],
                        channels)


_SCSE_BLOCK = 256  # positions per work item, as SCSE_BLOCK in the C source


class ScseAddKernels:
    """scSE "add" on CPU in three passes over the features (``cpu_kernels.c``): forward, and backward in two phases
    around the channel MLP's (tiny) backward, which stays in PyTorch. Tensors: contiguous, ``x``/``g`` ``(B, C, N)``,
    ``z``/``gpool`` ``(B, C)``, ``q``/``gl`` ``(B, N)``, ``ws`` ``(C,)``."""

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype, batch: int, channels: int, n: int):
        suf = "f32" if dtype == torch.float32 else "f64"
        self._fwd = getattr(lib, f"scse_add_forward_{suf}")
        self._bwd1 = getattr(lib, f"scse_add_backward1_{suf}")
        self._bwd2 = getattr(lib, f"scse_add_backward2_{suf}")
        self.dtype, self.batch, self.channels, self.n = dtype, batch, channels, n
        self.items = batch * -(-n // _SCSE_BLOCK)
        self.openmp = lib.tubeconv_openmp

    def forward(self, x, ws, bs: float, z):
        out = torch.empty_like(x)
        q = torch.empty(self.batch, self.n, dtype=self.dtype)
        dims = (self.batch, self.channels, self.n)
        ptrs = (x.data_ptr(), ws.data_ptr(), bs, z.data_ptr(), q.data_ptr(), out.data_ptr())
        _split(self.openmp, self.items, lambda i0, i1: self._fwd(*ptrs, *dims, i0, i1))
        return out, q

    def backward_reduce(self, g, x, q):
        """``gl`` (gradient of the spatial logits), gradient of ``z`` and of ``ws``."""
        gl = torch.empty(self.batch, self.n, dtype=self.dtype)
        gz_part = torch.empty(self.items, self.channels, dtype=self.dtype)
        gws_part = torch.empty(self.items, self.channels, dtype=self.dtype)
        dims = (self.batch, self.channels, self.n)
        ptrs = (g.data_ptr(), x.data_ptr(), q.data_ptr(), gl.data_ptr(), gz_part.data_ptr(), gws_part.data_ptr())
        _split(self.openmp, self.items, lambda i0, i1: self._bwd1(*ptrs, *dims, i0, i1))
        gz = gz_part.view(self.batch, -1, self.channels).sum(1)
        return gl, gz, gws_part.sum(0)

    def backward_input(self, g, z, q, gl, ws, gpool):
        gx = torch.empty_like(g)
        dims = (self.batch, self.channels, self.n)
        ptrs = (g.data_ptr(), z.data_ptr(), q.data_ptr(), gl.data_ptr(), ws.data_ptr(), gpool.data_ptr(), gx.data_ptr())
        _split(self.openmp, self.items, lambda i0, i1: self._bwd2(*ptrs, *dims, i0, i1))
        return gx


def scse_add_kernels(x: torch.Tensor, *params: torch.Tensor) -> ScseAddKernels | None:
    """scSE "add" CPU kernels for this input, or None (not CPU, not float32/float64, mixed dtypes, no library)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    if any(p.dtype != x.dtype or p.device.type != "cpu" for p in params):
        return None
    lib = _library()
    if lib is None:
        return None
    return ScseAddKernels(lib, x.dtype, x.shape[0], x.shape[1], x[0, 0].numel())


# ----------------------------------------------------------------------------------------------------------------
# DSConv's forward and backward on the kernels
# ----------------------------------------------------------------------------------------------------------------
# The CPU kernels' path takes chunks this many times larger than maths.CHUNK_ELEMENTS: every chunk is a handful of
# OpenMP parallel regions (kernels, GEMMs), and on a 2-core machine shared with other processes each region's barrier
# waits for a descheduled thread; 4x fewer regions made a DSConv forward + backward at nnU-Net's DRIVE plan's stage 2
# 2-3x faster in wall time at load 11 on 2 threads (and no slower alone); 16x was slower (cache).
NATIVE_CHUNK_SCALE = 4


def forward(snake: SnakeKernels, x, delta, weight, bias, extend_scope: float) -> torch.Tensor:
    """``y = sum_j W_j . interp(x, point_j) + b`` (the snake convolution's forward) with the compiled kernels
    ``snake`` (:func:`kernels`) for the reads: x: ``(B, C_in, *S)``; delta: ``(B, n_swing * (K - 1), *S)`` or None;
    weight: ``(C_out, C_in, K)``; bias: ``(C_out,)`` or None."""
    with torch.autocast("cpu", enabled=False):
        batch, c_in, spatial, c_out, kernel_size, n_all, x_rows, x_pos, delta_f = rows_of(x, delta, weight)
        w_outer, w_centre, _ = split_weight(weight)
        w_centre = w_centre.contiguous()
        y = torch.empty(batch, c_out, n_all, dtype=x.dtype)
        ranges = chunks(n_all, batch * kernel_size * c_in, NATIVE_CHUNK_SCALE)
        samples = torch.empty(batch * (ranges[0][1] - ranges[0][0]) * (kernel_size - 1) * c_in, dtype=x.dtype)
        for n0, n1 in ranges:
            x_c = x_pos[:, n0:n1].reshape(-1, c_in)
            yc = linear(x_c, w_centre, bias)  # the GEMMs on oneDNN where available (linear)
            if kernel_size > 1:
                s = samples[: batch * (n1 - n0) * (kernel_size - 1) * c_in].view(batch * (n1 - n0), -1)
                snake.sample(x_rows, delta_f, extend_scope, s, n0, n1)
                yc += linear(s, w_outer)
            y[:, :, n0:n1] = yc.view(batch, n1 - n0, c_out).transpose(1, 2)
        return y.view(batch, c_out, *spatial)


def backward(snake: SnakeKernels, grad_out, x, delta, weight, has_bias: bool, extend_scope: float,
             needs: tuple[bool, bool, bool, bool]):
    """Gradients ``(grad_x, grad_delta, grad_weight, grad_bias)`` of :func:`forward` (None where ``needs`` says so;
    ``needs[1]`` is False when ``delta`` is None) with the compiled kernels: per chunk, ``W^T g`` of every sample
    by a GEMM, then one kernel reads the samples (weight gradient) and the swing gradient, another scatters
    ``W^T g`` onto the interpolation corners (input gradient)."""
    need_x, need_delta, need_w, need_b = needs
    with torch.autocast("cpu", enabled=False):
        batch, c_in, spatial, c_out, kernel_size, n_all, x_rows, x_pos, delta_f = rows_of(x, delta, weight)
        g = grad_out.to(x.dtype).reshape(batch, c_out, n_all)
        w_outer, w_centre, _ = split_weight(weight)
        # transposed copies as linear weights: g @ W = linear(g, W^T) (the GEMMs on oneDNN where available)
        w_outer_lt, w_centre_lt = w_outer.t().contiguous(), w_centre.t().contiguous()
        grad_rows = torch.zeros(batch, n_all, c_in, dtype=x.dtype) if need_x else None
        grad_delta = torch.empty_like(delta_f) if need_delta else None  # (B, n_swing * (K - 1), N)
        grad_w_outer = torch.zeros(c_out, (kernel_size - 1) * c_in, dtype=x.dtype)
        grad_w_centre = torch.zeros(c_out, c_in, dtype=x.dtype)
        ranges = chunks(n_all, batch * kernel_size * c_in, NATIVE_CHUNK_SCALE)
        samples = torch.empty(batch * (ranges[0][1] - ranges[0][0]) * (kernel_size - 1) * c_in, dtype=x.dtype)
        for n0, n1 in ranges:
            n = n1 - n0
            g_rows = g[:, :, n0:n1].transpose(1, 2).reshape(batch * n, c_out)
            if need_w:
                grad_w_centre += linear(g_rows.t(), x_pos[:, n0:n1].reshape(-1, c_in).t())  # g^T x
            if need_x:
                grad_rows[:, n0:n1] += linear(g_rows, w_centre_lt).view(batch, n, c_in)
            if kernel_size == 1:
                continue
            # (B * n, (K - 1) * C_in): W^T g per sample
            gt = linear(g_rows, w_outer_lt) if (need_x or need_delta) else None
            s = samples[: batch * n * (kernel_size - 1) * c_in].view(batch * n, -1) if need_w else None
            if need_w or need_delta:
                snake.gather_backward(x_rows, delta_f, extend_scope, gt if gt is not None else s, s, grad_delta, n0, n1)
            if need_w:
                grad_w_outer += linear(g_rows.t(), s.t())  # g^T s
            if need_x:
                snake.scatter(grad_rows, delta_f, extend_scope, gt, n0, n1)
        grad_x = None
        if need_x:
            grad_x = grad_rows.view(batch, *spatial, c_in).movedim(-1, 1).contiguous()
        grad_w = None
        if need_w:
            grad_w = merge_weight_grad(grad_w_outer, grad_w_centre, weight.dtype)
        grad_d = grad_delta.view(delta.shape) if need_delta else None
        grad_b = g.sum((0, 2)) if (need_b and has_bias) else None
        return grad_x, grad_d, grad_w, grad_b
