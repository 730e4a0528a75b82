"""Mixed precision (bf16 autocast, as nnU-Net's training step runs on GPU) of every trainer's network.

One training step per trainer (benchmarks/perf/variant_nets.py) under ``torch.autocast("cpu", dtype=torch.bfloat16)``
against the same step in float32: finite loss and gradients, features in bf16, the sampling coordinates in float32
where they reach the samplers (DSConv's swing ``delta`` entering its autograd Function, DeformConv's offsets and mask
entering its Function; half precision is exact to half a voxel only up to index 512), and outputs close to float32.

Measured on these networks (``pytest tests/unit/test_amp.py``; the values printed by ``-s``): relative L2 error of every
deep-supervision output 0.7% (vanilla) to 2.9% (DSConv), gradient cosine to float32 0.977 to 0.9999. Tolerances:
outputs 6% (twice the worst measured), gradient cosine >= 0.95, loss 1%.
"""

from __future__ import annotations

import pytest
import torch

from nnunet_tubeconv.benchmarks.perf.variant_nets import TRAINERS, batch, build_network, loss_fn
from nnunet_tubeconv.blocks.deform import _DeformConvFunction
from nnunet_tubeconv.blocks.dsconv.function import SnakeConvFunction

torch.set_num_threads(1)


def _recorder(monkeypatch, cls, names: tuple[int, ...], seen: list):
    """Wrap ``cls.forward`` to record the dtypes of its positional tensor arguments ``names`` (indices after ctx)."""
    original = cls.forward

    def forward(ctx, *args):
        seen.append(tuple(None if args[i] is None else args[i].dtype for i in names))
        return original(ctx, *args)

    monkeypatch.setattr(cls, "forward", staticmethod(forward))


def _step(net, x, y, autocast: bool):
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net(x)
        loss = loss_fn(out, y)
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in net.parameters()])
    return out, loss, grads


@pytest.mark.parametrize("trainer", TRAINERS)
def test_bf16_autocast_step(trainer, monkeypatch):
    net = build_network(trainer)
    names = {type(m).__name__ for m in net.modules()}
    x, y = batch(2)
    out32, loss32, grads32 = _step(net, x, y, autocast=False)
    snake, deform = [], []
    _recorder(monkeypatch, SnakeConvFunction, (0, 1, 2), snake)  # x, delta, weight
    _recorder(monkeypatch, _DeformConvFunction, (0, 1, 2), deform)  # x, offset, mask
    out, loss, grads = _step(net, x, y, autocast=True)

    assert torch.isfinite(loss) and torch.isfinite(grads).all()
    assert all(p.grad is not None for p in net.parameters())
    assert all(o.dtype == torch.bfloat16 for o in out)  # the convolutions really ran in bf16
    if "DSConv" in names:
        assert snake and all(s == (torch.bfloat16, torch.float32, torch.bfloat16) for s in snake), snake
    else:
        assert snake == []
    if "DeformConv" in names:
        # offsets and mask float32; the features too, as grid_sample wants one dtype (DeformConv.forward)
        assert deform and all(d == (torch.float32,) * 3 for d in deform), deform
    errors = [((o.float() - r).norm() / r.norm()).item() for o, r in zip(out, out32)]
    cosine = torch.nn.functional.cosine_similarity(grads, grads32, dim=0).item()
    print(f"{trainer}: output relative L2 error {[round(e, 4) for e in errors]}, gradient cosine {cosine:.5f}")
    assert max(errors) < 0.06
    assert cosine > 0.95
    torch.testing.assert_close(loss, loss32, rtol=1e-2, atol=0)


def test_snake_coordinates_stay_float32_under_autocast():
    net = build_network("nnUNetTrainerDSConv")
    dsconv = next(m for m in net.modules() if type(m).__name__ == "DSConv")
    x = torch.randn(2, dsconv.input_channels, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coords = dsconv.snake_coordinates(x)
    assert coords.dtype == torch.float32
