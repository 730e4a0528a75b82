"""The compiled CPU kernels of DSConv (blocks/dsconv/cpu_backend.py): build, cache, fallbacks and both threading paths.

The kernels' numerics are tested in test_dsconv.py, where every test runs with and without them."""

import subprocess
import warnings

import pytest
import torch

from nnunet_tubeconv.blocks import DSConv
from nnunet_tubeconv.blocks.dsconv import cpu_backend
from nnunet_tubeconv.blocks.dsconv.maths import to_rows

needs_compiler = pytest.mark.skipif(cpu_backend._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture
def fresh_state(monkeypatch):
    """A process state in which the library has not been loaded yet (restored afterwards)."""
    monkeypatch.setattr(cpu_backend, "_state", {})
    return cpu_backend._state


def test_status_says_which_implementation_runs():
    line = cpu_backend.status()
    assert line.startswith(("native: ", "PyTorch fallback: "))
    assert ("compiled CPU kernels" in line) == (cpu_backend._library() is not None)


def test_environment_variable_disables_the_kernels(monkeypatch, fresh_state):
    monkeypatch.setenv("NNUNET_TUBECONV_NATIVE", "0")
    lib, reason = cpu_backend._build()
    assert lib is None and "NNUNET_TUBECONV_NATIVE=0" in reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched off on purpose: no warning
        assert cpu_backend.kernels(torch.randn(1, 2, 4, 4), None, torch.randn(2, 2, 3), 0, ()) is None
    assert cpu_backend.status().startswith("PyTorch fallback: disabled")


def test_no_compiler_falls_back_with_a_reason(monkeypatch, fresh_state):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(cpu_backend.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="no C compiler found"):
        assert cpu_backend.kernels(torch.randn(1, 2, 4, 4), None, torch.randn(2, 2, 3), 0, ()) is None
    m = DSConv(torch.nn.Conv2d, 2, 3, kernel_size=3, axis=1)  # still works, on the PyTorch implementation
    assert m(torch.randn(1, 2, 5, 4)).shape == (1, 3, 5, 4)


@needs_compiler
def test_compile_error_is_reported(tmp_path, monkeypatch, fresh_state):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(cpu_backend, "_SOURCE", bad)
    monkeypatch.setenv("NNUNET_TUBECONV_CACHE", str(tmp_path / "cache"))
    lib, reason = cpu_backend._build()
    assert lib is None and "failed" in reason and "bad.c" in reason
    assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library is left behind


@needs_compiler
def test_build_is_cached(tmp_path, monkeypatch, fresh_state):
    monkeypatch.setenv("NNUNET_TUBECONV_CACHE", str(tmp_path))
    compiles = []
    real_run = subprocess.run

    def counting_run(cmd, *args, **kwargs):
        if str(cpu_backend._SOURCE) in cmd:
            compiles.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(cpu_backend.subprocess, "run", counting_run)
    lib, reason = cpu_backend._build()
    assert lib is not None and str(tmp_path) in reason
    lib2, _ = cpu_backend._build()
    assert lib2 is not None
    assert len(compiles) == 1  # the second build loads the cached library
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]  # no temporary files left


def test_other_dtypes_and_devices_use_pytorch():
    w = torch.randn(2, 2, 3)
    assert cpu_backend.kernels(torch.randn(1, 2, 4, 4, dtype=torch.bfloat16), None, w.bfloat16(), 0, ()) is None
    x = torch.randn(1, 2, 4, 4)
    assert cpu_backend.kernels(x, torch.randn(1, 2, 4, 4, dtype=torch.float64), w, 0, (1,)) is None


@needs_compiler
def test_python_threads_and_openmp_give_the_same_results(monkeypatch, restore_torch_threads):
    """Without OpenMP the caller splits the work over Python threads: same numbers, also for the scatter."""
    if cpu_backend._library() is None:
        pytest.skip(cpu_backend.status())
    torch.manual_seed(0)
    batch, c, size = 3, 5, (6, 7, 4)
    x = torch.randn(batch, c, *size)
    delta = torch.randn(batch, 2 * 4, *size)
    w = torch.randn(4, c, 5)
    n = 6 * 7 * 4
    x_rows = to_rows(x).contiguous()
    d = delta.reshape(batch, -1, n).contiguous()
    gt = torch.randn(batch * n, 4 * c)
    results = {}
    torch.set_num_threads(2)  # restore_torch_threads puts it back
    for openmp in (True, False):
        k = cpu_backend.kernels(x, delta, w, 0, (1, 2))
        k.openmp = openmp
        s = torch.empty(batch * n, 4 * c)
        s2 = torch.empty_like(s)
        gd = torch.empty_like(d)
        gx = torch.zeros(batch, n, c)
        k.sample(x_rows, d, 1.2, s, 0, n)
        k.gather_backward(x_rows, d, 1.2, gt, s2, gd, 0, n)
        k.scatter(gx, d, 1.2, gt, 0, n)
        results[openmp] = (s, s2, gd, gx)
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(results[True][0], results[True][1], rtol=0, atol=0)  # the samples again


@needs_compiler
def test_scse_kernels_python_threads_and_openmp_agree(restore_torch_threads):
    if cpu_backend._library() is None:
        pytest.skip(cpu_backend.status())
    torch.manual_seed(1)
    x = torch.randn(3, 4, 700)  # 700 positions: two full blocks of 256 and a partial one
    ws, z, g = torch.randn(4), torch.rand(3, 4), torch.randn(3, 4, 700)
    gpool = torch.randn(3, 4)
    results = {}
    torch.set_num_threads(2)  # restore_torch_threads puts it back
    for openmp in (True, False):
        k = cpu_backend.scse_add_kernels(x, ws, z)
        k.openmp = openmp
        out, q = k.forward(x, ws, 0.3, z)
        gl, gz, gws = k.backward_reduce(g, x, q)
        gx = k.backward_input(g, z, q, gl, ws, gpool)
        results[openmp] = (out, q, gl, gz, gws, gx)
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b)
    q_ref = torch.sigmoid(torch.einsum("c,bcn->bn", ws, x) + 0.3)
    torch.testing.assert_close(results[True][0], x * (z[:, :, None] + q_ref[:, None]))
