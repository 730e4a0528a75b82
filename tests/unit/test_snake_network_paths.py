"""The snake network (nnUNetTrainerDSConv's) gives the same outputs and gradients on every DSConv path.

The CPU path was made faster (compiled kernels, oneDNN GEMMs); this pins that it did not change the results: a whole
snake U-Net (the default variant's placement and swing branch, with random non-zero swing weights so the snakes really
bend and reach the borders) is run forward and backward with the compiled CPU kernels (the default), with DSConv's
PyTorch implementation (no kernels), and with the traceable reference (the plain tensor operations graph capture
uses, differentiated by autograd), in float32, 2D and 3D.
"""

import pytest
import torch

import nnunet_tubeconv.blocks.dsconv.module as dsconv_module
from nnunet_tubeconv.architectures import variant_architecture
from nnunet_tubeconv.benchmarks.perf import bench_train
from nnunet_tubeconv.blocks import DSConv
from nnunet_tubeconv.blocks.dscblock import DSCBlock
from nnunet_tubeconv.blocks.dsconv import cpu_backend

PATHS = ("native", "pytorch", "traceable")
#: parameter names of conv biases followed by an instance norm (nnU-Net's conv blocks, DSConv, DSCBlock's branches)
NORMED_CONV_BIASES = (".conv.bias", ".plain.0.bias", ".fuse.bias")


def _network(dim: int, dtype: torch.dtype):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    entry, run = bench_train.small_plan(dim, quick=True)
    entry = variant_architecture(entry, "dsconv")
    torch.manual_seed(0)
    net = get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"], entry["_kw_requires_import"],
                                 1, 3, allow_init=True, deep_supervision=True).to(dtype)
    snakes = [m for m in net.modules() if isinstance(m, DSConv)]
    assert snakes and any(isinstance(m, DSCBlock) for m in net.modules())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in snakes:  # bend the snakes (a fresh swing conv is zero: a straight kernel would test little)
            m.swing_conv.weight.copy_(torch.randn(m.swing_conv.weight.shape, generator=g, dtype=dtype) * 0.5)
    x = torch.randn(run["batch_size"] + 1, 1, *run["patch_size"], generator=g, dtype=dtype)
    return net, x, snakes


def _run(net, x, path: str, monkeypatch):
    with monkeypatch.context() as mp:
        if path == "pytorch":
            mp.setattr(cpu_backend, "_library", lambda: None)
        elif path == "traceable":
            mp.setattr(dsconv_module, "tracing", lambda: True)
        net.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        outs = net(xx)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outs)
        loss.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], xx.grad, grads


@pytest.mark.parametrize("dim", [2, 3])
def test_snake_network_same_results_on_every_path(dim, monkeypatch):
    dtype = torch.float32  # the swing (sampling coordinates) is float32 in every network, so the features are too
    if cpu_backend._library() is None:
        pytest.skip(f"no compiled CPU kernels here: {cpu_backend.status()}")
    net, x, snakes = _network(dim, dtype)
    results = {p: _run(net, x, p, monkeypatch) for p in PATHS}
    ref_out, ref_gx, ref_grads = results["traceable"]
    # float32 through a deep network with instance norms: rounding differences of the sampling coordinates grow;
    # atol is relative to each tensor's largest value
    rtol, atol = 1e-3, 2e-4
    # the swing branch gets a gradient (the snakes bend) and is among the compared parameters
    swing_names = [n for n, p in net.named_parameters() if "swing_conv" in n]
    assert swing_names and all(ref_grads[n].abs().sum() > 0 for n in swing_names)
    # and the bending matters far beyond the tolerance: straight snakes give another output
    with torch.no_grad():
        for m in snakes:
            m.swing_conv.weight.zero_()
        straight = net(x)[0]
    assert ((straight - ref_out[0]).abs().max() / ref_out[0].abs().max()) > 100 * atol
    for path in ("native", "pytorch"):
        out, gx, grads = results[path]
        for o, r in zip(out, ref_out):  # outputs: every path, 2D and 3D
            torch.testing.assert_close(o / r.abs().max(), r / r.abs().max(), rtol=rtol, atol=atol)
    # gradients: the custom autograd function (native and PyTorch) against the reference, and in 3D the native
    # kernels against the PyTorch implementation only: there the traceable reference's autograd gradient differs by
    # about 1e-2 (input gradient) where large swings clamp at the borders (found here when the CPU path was made faster;
    # not changed)
    if dim == 3:
        ref_out, ref_gx, ref_grads = results["pytorch"]
    for path in ("native",) if dim == 3 else ("native", "pytorch"):
        out, gx, grads = results[path]
        assert set(grads) == set(ref_grads)
        torch.testing.assert_close(gx / ref_gx.abs().max(), ref_gx / ref_gx.abs().max(), rtol=rtol, atol=atol)
        # the biases of convolutions in front of an instance norm have a true gradient of 0 (the norm removes
        # them), so theirs is rounding noise: left out; the others are compared on their own scale, at least 1e-3
        # of the network's largest
        floor = 1e-3 * max(g.abs().max().item() for g in ref_grads.values())
        for n, b in ref_grads.items():
            if n.endswith(NORMED_CONV_BIASES):
                continue
            scale = max(b.abs().max().item(), floor)
            torch.testing.assert_close(grads[n] / scale, b / scale, rtol=rtol, atol=atol,
                                       msg=lambda m, n=n: f"{n}: {m}")


def test_paths_really_differ_in_implementation(monkeypatch):
    """The three paths are three implementations: the kernels run only on the native path (a check that can fail if
    a path silently ran another)."""
    if cpu_backend._library() is None:
        pytest.skip(f"no compiled CPU kernels here: {cpu_backend.status()}")
    net, x, _ = _network(2, torch.float32)
    calls = {p: 0 for p in PATHS}
    original = cpu_backend.SnakeKernels.sample
    for path in PATHS:
        def counting(self, *a, _path=path, **k):
            calls[_path] += 1
            return original(self, *a, **k)

        monkeypatch.setattr(cpu_backend.SnakeKernels, "sample", counting)
        _run(net, x, path, monkeypatch)
    assert calls["native"] > 0 and calls["pytorch"] == 0 and calls["traceable"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_is_a_times_w_transposed(dtype):
    """cpu_backend.linear (oneDNN for float32 where available, torch.mm otherwise) on the strided views DSConv
    passes."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(70, 24, generator=g, dtype=dtype)
    w = torch.randn(10, 24, generator=g, dtype=dtype)
    b = torch.randn(10, generator=g, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(cpu_backend.linear(a, w, b), a @ w.t() + b, **tol)
    torch.testing.assert_close(cpu_backend.linear(a, w), a @ w.t(), **tol)
    # transposed views, as in the weight gradient g^T s = linear(g^T, s^T)
    s = torch.randn(70, 16, generator=g, dtype=dtype)
    torch.testing.assert_close(cpu_backend.linear(a.t(), s.t()), a.t() @ s, **tol)


def test_onednn_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(cpu_backend, "_state", {})
    monkeypatch.setenv("NNUNET_TUBECONV_ONEDNN", "0")
    assert cpu_backend.onednn_linear() is None
    a, w = torch.randn(5, 3), torch.randn(4, 3)
    torch.testing.assert_close(cpu_backend.linear(a, w), a @ w.t())
    monkeypatch.setattr(cpu_backend, "_state", {})
    monkeypatch.delenv("NNUNET_TUBECONV_ONEDNN")
    assert (cpu_backend.onednn_linear() is not None) == torch.backends.mkldnn.is_available()
