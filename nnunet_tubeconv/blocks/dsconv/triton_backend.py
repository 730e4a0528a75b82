"""DSConv on Triton: the interpolated reads, the swing gradient and the adjoint scatter as Triton kernels
(``triton_kernels.py``), the GEMMs with the weights in PyTorch (cuBLAS).

Why: on CUDA the PyTorch path (:mod:`.torch_backend`) of :class:`~nnunet_tubeconv.blocks.dsconv.DSConv` runs a
dozen small operations per chunk of positions (``embedding_bag`` gathers, ``scatter_add_``, forward-difference
tables of the whole input and ``K``-times enlarged temporaries); the kernels read each interpolation corner once,
sum the cumulative swing in registers and need no difference tables. Same maths, same chunking and the same saved
tensors as the C CPU kernels (``cpu_kernels.c``, :mod:`.cpu_backend`), whose interface :func:`forward` /
:func:`backward` mirror.

Used by ``function.SnakeConvFunction`` for CUDA tensors (fp32, bf16, fp16 features; float32 swing) when Triton is
importable, unless ``NNUNET_TUBECONV_TRITON=0``; otherwise the PyTorch path runs (:func:`usable` decides). The same
functions run on CPU tensors under Triton's interpreter (the kernel source loaded a second time in interpreter mode):
slow, for tests and ``nnunet-tubeconv gpu-check --device cpu``, never chosen by the dispatch.

Precision: samples are interpolated in float32 and stored in the feature dtype for the GEMM; the input gradient is
accumulated in float32 (atomic adds) and the weight gradient from float32 partial sums, then cast to the features'
dtype; the swing gradient is float32.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from nnunet_tubeconv.blocks.dsconv.maths import merge_weight_grad, rows_of, split_range, split_weight
from nnunet_tubeconv.blocks.utils import numel

__all__ = ["DTYPES", "NoCudaBackend", "available", "backward", "compile_for_gpu", "forward", "status", "usable"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # feature dtypes the kernels take
_KERNELS_SOURCE = Path(__file__).with_name("triton_kernels.py")
# Elements of the (B * n, (K - 1) * C) sample buffer per chunk: larger than the CPU path's (1 << 20) since a GPU
# launch costs more than a cache miss; 2^24 elements are 32 MiB in bf16, small beside any 3D training step.
_CHUNK_ELEMENTS = 1 << 24
_BLOCK_R = 64
_lock = threading.Lock()
_modules: dict[bool, ModuleType] = {}


def _triton_import_error() -> str | None:
    try:
        import triton.language  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", with the reason shown
        return f"{type(exc).__name__}: {exc}"
    return None


def _disabled() -> bool:
    return os.environ.get("NNUNET_TUBECONV_TRITON", "1").strip().lower() in ("0", "false", "no", "off")


def available() -> bool:
    """Triton importable and not switched off by ``NNUNET_TUBECONV_TRITON=0``."""
    return not _disabled() and _triton_import_error() is None


def status() -> str:
    """One line: whether DSConv uses the Triton kernels on CUDA, and why (``nnunet-tubeconv doctor`` style)."""
    if _disabled():
        return "PyTorch path on CUDA: Triton kernels disabled by NNUNET_TUBECONV_TRITON=0"
    error = _triton_import_error()
    if error is not None:
        return f"PyTorch path on CUDA: Triton not importable ({error})"
    import triton

    return f"Triton kernels on CUDA (triton {triton.__version__})"


def usable(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """Whether :class:`~nnunet_tubeconv.blocks.dsconv.function.SnakeConvFunction` runs this call on the Triton kernels:
    a CUDA tensor of a dtype in :data:`DTYPES`, weights of the same dtype, a floating swing, and :func:`available`."""
    if x.device.type != "cuda" or x.dtype not in DTYPES or weight.dtype != x.dtype:
        return False
    if delta is not None and not delta.is_floating_point():
        return False
    return available()


def kernels(interpret: bool) -> ModuleType:
    """The kernel module, compiled (``interpret=False``, CUDA tensors) or under Triton's interpreter (CPU tensors).

    Triton decides at decoration time (``TRITON_INTERPRET``) which one a ``@triton.jit`` function becomes, so the
    source is executed once per mode under its own module name, with the interpreter switched on only while the
    interpreted copy is decorated."""
    if interpret not in _modules:
        with _lock:
            if interpret not in _modules:
                name = f"nnunet_tubeconv.blocks.dsconv.triton_kernels_{'interpreted' if interpret else 'compiled'}"
                spec = importlib.util.spec_from_file_location(name, _KERNELS_SOURCE)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # inspect.getsource (used by triton.jit) finds the file through it
                with _interpreting(interpret):
                    spec.loader.exec_module(module)
                _modules[interpret] = module
    return _modules[interpret]


@contextlib.contextmanager
def _interpreting(interpret: bool):
    """Triton's interpreter switched on (or off) for the block: at decoration time, and while interpreted kernels
    run (the interpreter decorates each called ``@triton.jit`` helper again from its source)."""
    import triton

    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = interpret
        yield


class _Launcher:
    """The three kernels for one (shape, axis, swing axes, K, C, device); tensors as in ``triton_kernels.py``."""

    def __init__(self, x: torch.Tensor, axis: int, swing_axes: tuple[int, ...], kernel_size: int):
        batch, channels, *spatial = x.shape
        pad = 3 - len(spatial)
        self.size = [1] * pad + [int(s) for s in spatial]
        self.axis = axis + pad
        self.nsw = len(swing_axes)
        sw = [s + pad for s in swing_axes] + [0] * (2 - len(swing_axes))
        self.sw0, self.sw1 = sw
        self.k1 = kernel_size - 1
        self.batch, self.channels, self.n_all = batch, channels, numel(spatial)
        self.block_c = min(64, max(16, 1 << (channels - 1).bit_length()))
        self.interpret = x.device.type != "cuda"
        self.device = x.device
        self.mod = kernels(interpret=self.interpret)

    def _launch(self, kernel, grid, *args, **kwargs):
        if self.interpret:
            with _interpreting(True):
                kernel[grid](*args, **kwargs)
        else:  # Triton launches on the current device: make it the tensors' one (cuda:1 while cuda:0 is current)
            with torch.cuda.device(self.device):
                kernel[grid](*args, **kwargs)

    def _common(self, scope: float, n0: int, n1: int):
        return (float(scope), n0, n1 - n0, self.batch, self.n_all, self.channels, *self.size)

    def _constexprs(self):
        return {"K1": self.k1, "AXIS": self.axis, "NSW": self.nsw, "SW0": self.sw0, "SW1": self.sw1,
                "BLOCK_R": _BLOCK_R}

    def _grid(self, n0: int, n1: int, channel_blocks: bool):
        rows = -(-self.batch * (n1 - n0) // _BLOCK_R)
        return (rows, -(-self.channels // self.block_c)) if channel_blocks else (rows,)

    def sample(self, x_rows, delta, scope, out, n0: int, n1: int):
        """``out`` ``(B * n, (K - 1) * C)`` <- interpolated outer points of positions ``n0 .. n1 - 1``."""
        d = x_rows if delta is None else delta  # an unread pointer when there is no swing
        self._launch(self.mod.sample_kernel, self._grid(n0, n1, True), x_rows, d, out, *self._common(scope, n0, n1),
                     BLOCK_C=self.block_c, **self._constexprs())

    def gather_backward(self, x_rows, delta, scope, gt, s_out, grad_delta, n0: int, n1: int):
        """``s_out`` (or None) <- the samples again; ``grad_delta`` (or None) <- the swing gradient of the chunk's
        positions in the full-size ``(B, n_swing * (K - 1), N)`` float32 tensor."""
        d = x_rows if delta is None else delta
        self._launch(
            self.mod.gather_backward_kernel, self._grid(n0, n1, False), x_rows, d,
            gt if gt is not None else s_out, s_out if s_out is not None else x_rows,
            grad_delta if grad_delta is not None else x_rows, *self._common(scope, n0, n1),
            STORE_S=s_out is not None, GRAD_DELTA=grad_delta is not None and self.nsw > 0, BLOCK_C=self.block_c,
            **self._constexprs())

    def scatter(self, gx_rows, delta, scope, gt, n0: int, n1: int):
        """``gx_rows`` ``(B, N, C)`` float32 += the adjoint of :meth:`sample` applied to ``gt``."""
        d = gt if delta is None else delta
        self._launch(self.mod.scatter_kernel, self._grid(n0, n1, True), gx_rows, d, gt, *self._common(scope, n0, n1),
                     BLOCK_C=self.block_c, **self._constexprs())


def _chunks(n: int, per_position: int) -> list[tuple[int, int]]:
    return split_range(n, per_position, _CHUNK_ELEMENTS)


def forward(x, delta, weight, bias, axis: int, swing_axes: tuple[int, ...], extend_scope: float) -> torch.Tensor:
    """``y = sum_j W_j . interp(x, point_j) + b`` (``SnakeConvFunction.forward``'s maths) with the Triton sample
    kernel. x: ``(B, C_in, *S)``; delta: ``(B, n_swing * (K - 1), *S)`` or None; weight: ``(C_out, C_in, K)``."""
    with torch.autocast(x.device.type, enabled=False):
        batch, c_in, spatial, c_out, kernel_size, n_all, x_rows, x_pos, delta_f = rows_of(x, delta, weight)
        swing_axes = tuple(swing_axes) if delta is not None else ()
        w_outer, w_centre, _ = split_weight(weight)
        w_outer_t, w_centre_t = w_outer.t(), w_centre.t()
        y = torch.empty(batch, c_out, n_all, device=x.device, dtype=x.dtype)
        chunks = _chunks(n_all, batch * kernel_size * c_in)
        launcher = _Launcher(x, axis, swing_axes, kernel_size) if kernel_size > 1 else None
        samples = None
        if launcher is not None:
            size = batch * (chunks[0][1] - chunks[0][0]) * (kernel_size - 1) * c_in
            samples = torch.empty(size, device=x.device, dtype=x.dtype)
        for n0, n1 in chunks:
            x_c = x_pos[:, n0:n1].reshape(-1, c_in)
            yc = x_c @ w_centre_t if bias is None else torch.addmm(bias, x_c, w_centre_t)
            if launcher is not None:
                s = samples[: batch * (n1 - n0) * (kernel_size - 1) * c_in].view(batch * (n1 - n0), -1)
                launcher.sample(x_rows, delta_f, extend_scope, s, n0, n1)
                yc.addmm_(s, w_outer_t)
            y[:, :, n0:n1] = yc.view(batch, n1 - n0, c_out).transpose(1, 2)
    return y.view(batch, c_out, *spatial)


def backward(grad_out, x, delta, weight, has_bias: bool, axis: int, swing_axes: tuple[int, ...],
             extend_scope: float, needs: tuple[bool, bool, bool, bool]):
    """Gradients ``(grad_x, grad_delta, grad_weight, grad_bias)`` of :func:`forward` (None where ``needs`` says so):
    per chunk, ``W^T g`` of every sample by a GEMM, then one kernel reads the samples (weight gradient) and the swing
    gradient, another scatters ``W^T g`` onto the interpolation corners (input gradient, float32 atomics)."""
    need_x, need_delta, need_w, need_b = needs
    need_delta = need_delta and delta is not None
    with torch.autocast(x.device.type, enabled=False):
        batch, c_in, spatial, c_out, kernel_size, n_all, x_rows, x_pos, delta_f = rows_of(x, delta, weight)
        dev = x.device
        swing_axes = tuple(swing_axes) if delta is not None else ()
        g = grad_out.to(x.dtype).reshape(batch, c_out, n_all)
        w_outer, w_centre, _ = split_weight(weight)
        grad_rows = torch.zeros(batch, n_all, c_in, device=dev, dtype=torch.float32) if need_x else None
        grad_delta = torch.zeros(delta_f.shape, device=dev, dtype=torch.float32) if need_delta else None
        grad_w_outer = torch.zeros(c_out, (kernel_size - 1) * c_in, device=dev, dtype=torch.float32)
        grad_w_centre = torch.zeros(c_out, c_in, device=dev, dtype=torch.float32)
        chunks = _chunks(n_all, batch * kernel_size * c_in)
        launcher = _Launcher(x, axis, swing_axes, kernel_size) if kernel_size > 1 else None
        samples = None
        if launcher is not None and need_w:
            size = batch * (chunks[0][1] - chunks[0][0]) * (kernel_size - 1) * c_in
            samples = torch.empty(size, device=dev, dtype=x.dtype)
        for n0, n1 in chunks:
            n = n1 - n0
            g_rows = g[:, :, n0:n1].transpose(1, 2).reshape(batch * n, c_out)
            if need_w:
                grad_w_centre += (g_rows.t() @ x_pos[:, n0:n1].reshape(-1, c_in)).float()
            if need_x:
                grad_rows[:, n0:n1] += (g_rows @ w_centre).view(batch, n, c_in).float()
            if launcher is None:
                continue
            gt = (g_rows @ w_outer).contiguous() if (need_x or need_delta) else None  # W^T g per sample
            s = samples[: batch * n * (kernel_size - 1) * c_in].view(batch * n, -1) if need_w else None
            if need_w or need_delta:
                launcher.gather_backward(x_rows, delta_f, extend_scope, gt, s, grad_delta, n0, n1)
            if need_w:
                grad_w_outer += (g_rows.t() @ s).float()
            if need_x:
                launcher.scatter(grad_rows, delta_f, extend_scope, gt, n0, n1)
        grad_x = None
        if need_x:
            grad_x = grad_rows.view(batch, *spatial, c_in).movedim(-1, 1).to(x.dtype).contiguous()
        grad_w = None
        if need_w:
            grad_w = merge_weight_grad(grad_w_outer, grad_w_centre, weight.dtype)
        grad_d = grad_delta.view(delta.shape).to(delta.dtype) if need_delta else None
        grad_b = g.float().sum((0, 2)).to(weight.dtype) if (need_b and has_bias) else None
    return grad_x, grad_d, grad_w, grad_b


class NoCudaBackend(RuntimeError):
    """Triton here cannot compile for NVIDIA GPUs (no CUDA backend or no ptxas in this installation)."""


_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compile_for_gpu(capability: int = 90, dtype: torch.dtype = torch.bfloat16, n_swing: int = 2) -> dict[str, int]:
    """Compile the three kernels ahead of time for an NVIDIA GPU of compute ``capability`` (90: H100/H200), with no
    GPU present: ``n_swing`` swing axes (2: a 3D DSConv), features of ``dtype`` (the axes, K and the sizes are
    runtime arguments, so this is every kernel a 3D network of that dtype runs). Returns the size in bytes of each
    kernel's cubin.
    Proves that the real compiler (not only the interpreter) accepts the kernels; raises :class:`NoCudaBackend`
    where this Triton cannot target CUDA, and ``ValueError`` for a dtype the kernels do not take."""
    if dtype not in _TRITON_TYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in DTYPES]}, got {dtype}")
    if n_swing not in (0, 1, 2):
        raise ValueError(f"n_swing must be 0, 1 or 2 (swing axes of a 3D DSConv), got {n_swing!r}")
    import triton
    from triton.backends.compiler import GPUTarget

    if "nvidia" not in getattr(triton.backends, "backends", {}):
        raise NoCudaBackend("this Triton installation has no NVIDIA backend")
    mod = kernels(interpret=False)
    # integer arguments as Triton passes them at run time for any size below 2^31 (32-bit)
    feat, i32 = "*" + _TRITON_TYPES[dtype], "i32"
    common = {"scope": "fp32", "n0": i32, "n": i32, "B": i32, "N": i32, "C": i32, "size0": i32, "size1": i32,
              "size2": i32, "delta_ptr": "*fp32", "K1": i32, "AXIS": i32, "SW0": i32, "SW1": i32}
    consts = {"NSW": n_swing, "BLOCK_R": _BLOCK_R, "BLOCK_C": 32}
    specs = {
        "sample_kernel": ({"x_ptr": feat, "s_ptr": feat}, {}),
        "gather_backward_kernel": ({"x_ptr": feat, "gt_ptr": feat, "s_ptr": feat, "gdelta_ptr": "*fp32"},
                                   {"STORE_S": True, "GRAD_DELTA": n_swing > 0}),
        "scatter_kernel": ({"gx_ptr": "*fp32", "gt_ptr": feat}, {}),
    }
    sizes = {}
    for name, (pointers, extra) in specs.items():
        fn = getattr(mod, name)
        constexprs = {**consts, **extra}
        types = {**common, **pointers}
        signature = {arg: "constexpr" if arg in constexprs else types[arg] for arg in fn.arg_names}
        source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
        except (FileNotFoundError, RuntimeError) as exc:
            if "ptxas" in str(exc):
                raise NoCudaBackend(f"cannot assemble for sm_{capability}: {exc}") from exc
            raise
        sizes[name] = len(compiled.asm["cubin"])
    return sizes
