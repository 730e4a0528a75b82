"""DSConv's Triton kernels (blocks/dsconv/triton_backend.py, blocks/dsconv/triton_kernels.py), run on CPU tensors
under Triton's interpreter: values and gradients against the PyTorch path (float64) and the compiled C kernels, every
morph axis in 2D and 3D, odd sizes, batch > 1, clamped borders, size-1 axes, several chunks, fp32/bf16/fp16
features; the CUDA dispatch (Triton when available, PyTorch otherwise, same results). The real compiler's acceptance
of the kernels for an sm_90 GPU is in integration/test_triton_compile.py."""

import types

import pytest
import torch

from nnunet_tubeconv.blocks import DSConv
from nnunet_tubeconv.blocks.dsconv import cpu_backend, triton_backend
from nnunet_tubeconv.blocks.dsconv.function import SnakeConvFunction

triton = pytest.importorskip("triton", reason="Triton is not importable here")

# (spatial size, morph axis, swing axes): every axis of 2D and 3D, odd sizes, a size-1 axis, sizes below K
CASES = [
    ((7, 9), 0, (1,)),
    ((9, 7), 1, (0,)),
    ((5, 6, 7), 0, (1, 2)),
    ((5, 6, 7), 1, (0, 2)),
    ((4, 5, 3), 2, (0, 1)),
    ((3, 1, 6), 0, (1, 2)),  # a size-1 swing axis: its corners coincide
    ((6, 5, 4), 1, (2,)),  # an anisotropic stage: one swing axis in 3D
]


def make_inputs(spatial, swing_axes, kernel_size=5, batch=2, c_in=3, c_out=4, swing=2.0, seed=0):
    """float64 inputs; a swing of ``swing`` per point pushes many outer points past the border (clamped)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, *spatial, generator=g, dtype=torch.float64)
    delta = torch.randn(batch, len(swing_axes) * (kernel_size - 1), *spatial, generator=g, dtype=torch.float64) * swing
    w = torch.randn(c_out, c_in, kernel_size, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64)
    return x, delta, w, b


def reference(x, delta, w, b, axis, swing_axes, scope, grad_out, native: bool):
    """Output and gradients (x, delta, w, b) of ``SnakeConvFunction`` on the PyTorch path or the C kernels."""
    leaves = [t.clone().requires_grad_() for t in (x, delta, w, b)]
    saved = cpu_backend._state.copy()
    try:
        if not native:
            cpu_backend._state.update(lib=None, reason="off for the test")
        y = SnakeConvFunction.apply(*leaves, axis, swing_axes, scope)
        grads = torch.autograd.grad(y, leaves, grad_out.to(y.dtype))
    finally:
        cpu_backend._state.clear()
        cpu_backend._state.update(saved)
    return y, grads


def triton_run(x, delta, w, b, axis, swing_axes, scope, grad_out, dtype):
    xs, ws, bs = x.to(dtype), w.to(dtype), b.to(dtype)
    d = delta.float()
    y = triton_backend.forward(xs, d, ws, bs, axis, swing_axes, scope)
    grads = triton_backend.backward(grad_out.to(dtype), xs, d, ws, True, axis, swing_axes, scope,
                                    (True, True, True, True))
    return y, grads


def assert_close_all(got, want, rtol, atol):
    y, grads = got
    y_ref, grads_ref = want
    torch.testing.assert_close(y.double(), y_ref.double(), rtol=rtol, atol=atol)
    for name, g, r in zip(("x", "delta", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(g.double(), r.double(), rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("spatial,axis,swing_axes", CASES)
def test_float32_matches_pytorch_path_and_c_kernels(spatial, axis, swing_axes):
    x, delta, w, b = make_inputs(spatial, swing_axes)
    scope = 1.5
    grad_out = torch.randn(x.shape[0], w.shape[0], *spatial, dtype=torch.float64)
    got = triton_run(x, delta, w, b, axis, swing_axes, scope, grad_out, torch.float32)
    assert got[0].dtype == torch.float32 and got[1][1].dtype == torch.float32
    want = reference(x, delta, w, b, axis, swing_axes, scope, grad_out, native=False)  # float64 PyTorch path
    assert_close_all(got, want, rtol=1e-4, atol=1e-4)
    if cpu_backend._library() is not None:
        c_kernels = reference(x.float(), delta.float(), w.float(), b.float(), axis, swing_axes, scope,
                              grad_out.float(), native=True)
        assert_close_all(got, c_kernels, rtol=1e-4, atol=1e-4)


def test_clamped_points_get_no_swing_gradient():
    x, _, w, b = make_inputs((5, 4), (1,), kernel_size=3, batch=1, c_in=1, c_out=1)
    delta = torch.zeros(1, 2, 5, 4, dtype=torch.float64)
    delta[:, 1] = 5.0  # point j = +1 pushed 5 voxels along axis 1: outside the 4-wide volume everywhere
    delta[:, 0] = 0.3
    grad_out = torch.ones(1, 1, 5, 4, dtype=torch.float64)
    _, (_, gd, _, _) = triton_run(x, delta, w, b, 0, (1,), 1.0, grad_out, torch.float32)
    assert torch.all(gd[:, 1] == 0)
    assert gd[:, 0, :, :2].abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spatial,axis,swing_axes", [((7, 9), 1, (0,)), ((5, 6, 7), 2, (0, 1))])
def test_half_precision_features_float32_coordinates(dtype, spatial, axis, swing_axes):
    x, delta, w, b = make_inputs(spatial, swing_axes, swing=1.0)
    grad_out = torch.randn(x.shape[0], w.shape[0], *spatial, dtype=torch.float64)
    got = triton_run(x, delta, w, b, axis, swing_axes, 1.0, grad_out, dtype)
    y, (gx, gd, gw, gb) = got
    assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype and gb.dtype == dtype
    assert gd.dtype == torch.float32  # the swing (coordinates) keeps float32
    # against float64 on the features rounded to the same dtype: only the GEMMs' rounding differs
    xr, wr, br = (t.to(dtype).double() for t in (x, w, b))
    want = reference(xr, delta.float().double(), wr, br, axis, swing_axes, 1.0, grad_out.to(dtype).double(),
                     native=False)
    tol = 0.02 if dtype == torch.float16 else 0.08
    assert_close_all(got, want, rtol=tol, atol=tol)
    # and the PyTorch path in the same dtype agrees as closely (it interpolates in that dtype too)
    torch.testing.assert_close(
        y.double(), reference(x.to(dtype), delta.float(), w.to(dtype), b.to(dtype), axis, swing_axes, 1.0,
                              grad_out.to(dtype), native=False)[0].double(), rtol=tol, atol=tol)


def test_many_chunks_and_many_channel_blocks(monkeypatch):
    """Chunks of a few positions (the chunk offset enters every index) and C_in > 64 (several channel blocks)."""
    monkeypatch.setattr(triton_backend, "_CHUNK_ELEMENTS", 2 * 5 * 70 * 4)  # 4 positions per chunk: 30 / 4 -> 8 chunks
    x, delta, w, b = make_inputs((5, 6), (1,), batch=2, c_in=70, c_out=3)
    grad_out = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    assert len(triton_backend._chunks(30, 2 * 5 * 70)) == 8
    got = triton_run(x, delta, w, b, 0, (1,), 1.0, grad_out, torch.float32)
    want = reference(x, delta, w, b, 0, (1,), 1.0, grad_out, native=False)
    assert_close_all(got, want, rtol=1e-4, atol=1e-4)


def test_no_swing_and_single_point(monkeypatch):
    monkeypatch.setattr(cpu_backend, "_library", lambda: None)
    x, _, w, b = make_inputs((6, 5), (), kernel_size=3)
    grad_out = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    for kernel in (w, w[:, :, 1:2]):  # K = 3 without swing (a plain axis conv), K = 1 (no sampling at all)
        y = triton_backend.forward(x.float(), None, kernel.float(), b.float(), 1, (), 1.0)
        gx, gd, gw, gb = triton_backend.backward(grad_out.float(), x.float(), None, kernel.float(), True, 1, (), 1.0,
                                          (True, False, True, True))
        leaves = [t.clone().requires_grad_() for t in (x, kernel, b)]
        y_ref = SnakeConvFunction.apply(leaves[0], None, leaves[1], leaves[2], 1, (), 1.0)
        g_ref = torch.autograd.grad(y_ref, leaves, grad_out)
        assert gd is None
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
        for g, r in zip((gx, gw, gb), g_ref):
            torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the dispatch in SnakeConvFunction


def fake_tensor(device="cuda", dtype=torch.bfloat16):
    return types.SimpleNamespace(device=torch.device(device), dtype=dtype, is_floating_point=lambda: True)


def test_usable_only_on_cuda_with_supported_dtypes(monkeypatch):
    monkeypatch.delenv("NNUNET_TUBECONV_TRITON", raising=False)
    w = fake_tensor()
    assert triton_backend.usable(fake_tensor(), fake_tensor(dtype=torch.float32), w)
    assert triton_backend.usable(fake_tensor(dtype=torch.float32), None, fake_tensor(dtype=torch.float32))
    assert not triton_backend.usable(fake_tensor("cpu"), None, w)  # CPU: the C kernels or the PyTorch path
    assert not triton_backend.usable(fake_tensor(dtype=torch.float64), None, fake_tensor(dtype=torch.float64))
    assert not triton_backend.usable(fake_tensor(), None, fake_tensor(dtype=torch.float32))  # mixed dtypes
    monkeypatch.setenv("NNUNET_TUBECONV_TRITON", "0")
    assert not triton_backend.usable(fake_tensor(), None, w)
    assert "NNUNET_TUBECONV_TRITON=0" in triton_backend.status()
    monkeypatch.delenv("NNUNET_TUBECONV_TRITON")
    monkeypatch.setattr(triton_backend, "_triton_import_error", lambda: "ImportError: no triton")
    assert not triton_backend.usable(fake_tensor(), None, w)
    assert "not importable" in triton_backend.status()


def test_doctor_says_which_path_runs_on_cuda(monkeypatch):
    from nnunet_tubeconv.doctor import check_triton_kernels

    monkeypatch.delenv("NNUNET_TUBECONV_TRITON", raising=False)
    check = check_triton_kernels(cuda_available=True)
    assert check.status == "ok" and f"triton {triton.__version__}" in check.what
    monkeypatch.setenv("NNUNET_TUBECONV_TRITON", "0")
    check = check_triton_kernels(cuda_available=True)
    assert check.status == "warn" and "PyTorch path" in check.what and "NNUNET_TUBECONV_TRITON" in check.fix
    assert check_triton_kernels(cuda_available=False).status == "ok"  # no GPU: nothing to fix


@pytest.mark.parametrize("triton_available", [True, False])
def test_dispatch_picks_triton_when_usable_and_results_do_not_change(monkeypatch, triton_available):
    """DSConv forward + backward with the dispatch told that this (CPU) call is a CUDA call Triton can take: the
    Triton functions run (interpreted) exactly when available, and the results equal the PyTorch path's."""
    monkeypatch.setattr(cpu_backend, "_library", lambda: None)  # no C kernels: the dispatch decides Triton vs PyTorch
    calls = []
    real_forward, real_backward = triton_backend.forward, triton_backend.backward
    monkeypatch.setattr(triton_backend, "forward", lambda *a: calls.append("forward") or real_forward(*a))
    monkeypatch.setattr(triton_backend, "backward", lambda *a: calls.append("backward") or real_backward(*a))
    monkeypatch.setattr(triton_backend, "usable",
                        lambda x, delta, weight: triton_available and x.dtype in triton_backend.DTYPES)

    torch.manual_seed(0)
    m = DSConv(torch.nn.Conv3d, 3, 4, kernel_size=5, axis=1)
    with torch.no_grad():
        m.swing_conv.weight.normal_(0, 0.5)
    x = torch.randn(2, 3, 5, 6, 4, requires_grad=True)

    def run(module, inp):
        y = module(inp)
        y.square().sum().backward()
        grads = [inp.grad.clone()] + [p.grad.clone() for p in module.parameters()]
        inp.grad = None
        module.zero_grad()
        return y.detach(), grads

    y, grads = run(m, x)
    assert calls == (["forward", "backward"] if triton_available else [])
    monkeypatch.setattr(triton_backend, "usable", lambda x, delta, weight: False)
    y_ref, grads_ref = run(m, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
