"""torch.compile of every variant's network with the blocks' real kernels (nnU-Net compiles the network on GPU).

DSConv's and scSE's custom autograd Functions (C kernels on CPU) are ``torch.library`` custom ops with fake
implementations (``blocks/dsconv/custom_ops.py``, ``blocks/scse.py``); under ``torch.compile`` the blocks call them
(``blocks/utils.compiling``), DeformConv's Function and DLK's layout change are traced by dynamo as they stand. What
is pinned here:

* ``torch.library.opcheck`` on every op (schema, fake tensors, autograd registration, AOT dispatch with dynamic shapes);
* every trainer's network (benchmarks/perf/variant_nets.py: vanilla and the 6 variant trainers) compiles with
  ``fullgraph=True`` (any graph break fails) through AOTAutograd (``aot_eager``: the same forward and backward graphs
  inductor gets, without code generation), with outputs and gradients equal to eager, and the forward and backward
  graphs hold our custom ops (the real kernels), never the traceable fallback's gathers;
* the full inductor CPU backend on every trainer's network, outputs and gradients against eager, is in
  integration/test_compile_inductor.py (20-75 s per network on 2 cores).
"""

from __future__ import annotations

import pytest
import torch
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from nnunet_tubeconv.benchmarks.perf.variant_nets import TRAINERS, batch, build_network, loss_fn, variant_trainers
from nnunet_tubeconv.blocks import SCSE, scse
from nnunet_tubeconv.blocks.dsconv import cpu_backend, custom_ops
from nnunet_tubeconv.blocks.dsconv.function import SnakeConvFunction

torch.set_num_threads(1)

SNAKE_OPS = {"nnunet_tubeconv.snake_conv.default", "nnunet_tubeconv.snake_conv_backward.default"}
SCSE_OPS = {"nnunet_tubeconv.scse_add.default", "nnunet_tubeconv.scse_add_backward.default"}


# ------------------------------------------------------------------------------------------------------- the ops
@pytest.mark.parametrize(("dim", "swing", "channels_last"),
                         [(2, True, False), (3, True, False), (2, False, False), (3, False, False), (2, True, True)])
def test_opcheck_snake_conv(dim, swing, channels_last):
    """Schema, fake tensors (shapes, dtypes and strides: a channels-last input still gives contiguous results, as
    the fakes say), autograd registration, AOT dispatch with dynamic shapes."""
    torch.manual_seed(0)
    spatial = [7, 6, 5][:dim]
    swing_axes = [0, 2][: dim - 1]
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    delta = None
    if swing:
        delta = torch.tanh(2 * torch.randn(2, len(swing_axes) * 6, *spatial, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(4, 3, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(custom_ops.snake_conv_op, (x, delta, weight, bias, 1, swing_axes, 1.5))
    torch.library.opcheck(custom_ops.snake_conv_op, (x, delta, weight, None, 1, swing_axes, 1.5))


def test_opcheck_scse_add():
    if not cpu_backend.available():
        pytest.skip("no compiled CPU kernels here (no C compiler or NNUNET_TUBECONV_NATIVE=0): scSE has no op to check")
    torch.manual_seed(0)
    m = SCSE(nn.Conv2d, 4).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    args = (x, m.squeeze.weight.view(2, 4), m.squeeze.bias, m.excite.weight.view(4, 2), m.excite.bias,
            m.spatial.weight.view(4), m.spatial.bias)
    torch.library.opcheck(scse.scse_add_op, args)


def test_snake_op_equals_the_eager_function():
    """The op is the eager Function: bit-identical output and gradients."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    delta = torch.tanh(2 * torch.randn(2, 8, 9, 8)).requires_grad_()
    weight, bias = torch.randn(4, 3, 9, requires_grad=True), torch.randn(4, requires_grad=True)
    g = torch.randn(2, 4, 9, 8)
    results = []
    for f in (SnakeConvFunction.apply, custom_ops.snake_conv):
        y = f(x, delta, weight, bias, 0, (1,), 1.0)
        results.append([y, *torch.autograd.grad(y, (x, delta, weight, bias), g)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- every variant, AOT
def _recording_backend(graphs: dict[str, list]):
    def compiler(kind):
        def compile_graph(gm, example_inputs):
            graphs.setdefault(kind, []).append(gm)
            return make_boxed_func(gm.forward)

        return compile_graph

    return aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))


def _targets(gms) -> set[str]:
    return {str(n.target) for gm in gms for n in gm.graph.nodes if n.op == "call_function"}


def _step(model, net, x, y):
    net.zero_grad(set_to_none=True)
    out = model(x)
    loss = loss_fn(out, y)
    loss.backward()
    return out, loss, {k: p.grad.clone() for k, p in net.named_parameters()}


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_variant_compiles_in_one_graph_with_our_ops(trainer):
    net = build_network(trainer)
    x, y = batch(2)
    out_ref, loss_ref, grads_ref = _step(net, net, x, y)
    graphs: dict[str, list] = {}
    compiled = torch.compile(net, backend=_recording_backend(graphs), fullgraph=True, dynamic=False)
    out, loss, grads = _step(compiled, net, x, y)
    assert len(graphs["forward"]) == len(graphs["backward"]) == 1  # one graph: fullgraph=True forbids breaks
    for a, b in zip(out, out_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=1e-4, atol=1e-5, msg=k)
    forward, backward = _targets(graphs["forward"]), _targets(graphs["backward"])
    names = {type(m).__name__ for m in net.modules()}
    if "DSConv" in names:
        assert "nnunet_tubeconv.snake_conv.default" in forward
        assert "nnunet_tubeconv.snake_conv_backward.default" in backward
        assert not any("gather" in t for t in forward)  # the traceable fallback samples with int64 gathers
    if "SCSE" in names and cpu_backend.available():
        assert "nnunet_tubeconv.scse_add.default" in forward
        assert "nnunet_tubeconv.scse_add_backward.default" in backward
    if "DeformConv" in names:
        # the eager autograd Function's own backward is kept: grid_sample's backward op, called by hand
        assert any("grid_sampler_2d_backward" in t for t in backward)
    if not names & {"DSConv", "SCSE"}:
        assert not (forward | backward) & (SNAKE_OPS | SCSE_OPS)


def test_variant_list_covers_every_variant_trainer():
    variants = {v for v, _ in variant_trainers().values()}
    from nnunet_tubeconv.architectures import VARIANTS

    assert variants == {None, *VARIANTS}


def test_compiled_network_under_bf16_autocast():
    """nnU-Net compiles the network and trains it under autocast: the snake op takes bf16 features and float32
    swings there, and its fake gives the bf16 output the real op gives."""
    net = build_network("nnUNetTrainerTubeConv")
    x, y = batch(2)
    results = []
    for model in (net, torch.compile(net, backend="aot_eager", fullgraph=True, dynamic=False)):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = loss_fn(out, y)
        loss.backward()
        results.append((out, loss, torch.cat([p.grad.flatten() for p in net.parameters()])))
    (out_ref, loss_ref, grads_ref), (out, loss, grads) = results
    assert all(o.dtype == torch.bfloat16 for o in out) and torch.isfinite(grads).all()
    for a, b in zip(out, out_ref):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-3, atol=0)
    assert torch.nn.functional.cosine_similarity(grads, grads_ref, dim=0) > 0.999


def _saved_for_backward(model: nn.Module, x: torch.Tensor) -> int:
    """Elements of every tensor the compiled backward graph receives (saved tensors, parameters, the tangent)."""
    seen: dict[str, int] = {}

    def backward_compiler(gm, example_inputs):
        seen["elements"] = sum(t.numel() for t in example_inputs if isinstance(t, torch.Tensor))
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=backward_compiler)
    torch._dynamo.reset()
    torch.compile(model, backend=backend, fullgraph=True, dynamic=False)(x).sum().backward()
    return seen["elements"]


def test_compiled_dsconv_keeps_the_lean_backward(monkeypatch):
    """What the custom op buys under compile: the backward graph keeps about what eager keeps (the input, the swing,
    the norm's tensors: compute_conv_feature_map_size), where the traceable fallback keeps K-times enlarged samples
    (measured 115,936 against 705,762 elements here, 6.1x)."""
    from nnunet_tubeconv.blocks import DSConv
    from nnunet_tubeconv.blocks.dsconv import module as dsconv_module

    torch.manual_seed(0)
    m = DSConv(nn.Conv2d, 8, 8, kernel_size=9, axis=0, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
               nonlin=nn.LeakyReLU)
    nn.init.normal_(m.swing_conv.weight, std=0.3)
    x = torch.randn(2, 8, 32, 32, requires_grad=True)
    ops = _saved_for_backward(m, x)
    eager = 2 * m.compute_conv_feature_map_size([32, 32]) + x.numel() + sum(p.numel() for p in m.parameters())
    assert ops <= 1.25 * eager, (ops, eager)
    monkeypatch.setattr(dsconv_module, "tracing", lambda: True)  # the plain-operations path exports take
    fallback = _saved_for_backward(m, x)
    assert fallback >= 3 * ops, (fallback, ops)
