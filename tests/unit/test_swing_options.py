"""DSConv's swing-branch options: ``swing_norm``, ``swing_lr_scale``, their block options, and the trainer's
parameter groups under nnU-Net's poly schedule (the snakes ablation chose the defaults, docs/studies/snakes.md)."""

from __future__ import annotations

import itertools
from types import MappingProxyType

import pytest
import torch
from support.nnunet import stub_preprocessed
from support.plans import TINY_DATASET_JSON, tiny_plans
from torch import nn

from nnunet_tubeconv.architectures.options import DEFAULT_BLOCK_OPTIONS, resolve_block_options
from nnunet_tubeconv.blocks.dscblock import DSCBlock
from nnunet_tubeconv.blocks.dsconv import SWING_NORMS, DSConv, snake_conv
from nnunet_tubeconv.trainers import nnUNetTrainerDSConv
from nnunet_tubeconv.trainers.tubeconv_base import ScaledPolyLRScheduler, lr_scaled_param_groups
from nnunet_tubeconv.vocabulary import SWING_NORMS as VOCAB_SWING_NORMS

torch.set_num_threads(1)


def _nnunet_sgd(params, lr=1e-2):
    """nnU-Net's optimiser settings (nnUNetTrainer.configure_optimizers)."""
    return torch.optim.SGD(params, lr, weight_decay=3e-5, momentum=0.99, nesterov=True)


def _swing_after_steps(swing_norm: str, steps: int, seed: int = 0) -> list[float]:
    """Mean |delta| of a fresh DSConv (InstanceNorm stage, K = 9) before and after each of ``steps`` SGD steps on a
    random regression target (the measurement that showed the stage norm voiding the zero init)."""
    torch.manual_seed(seed)
    m = DSConv(nn.Conv2d, 16, 16, kernel_size=9, axis=0, norm_op=nn.InstanceNorm2d,
               norm_op_kwargs={"affine": True}, swing_norm=swing_norm)
    opt = _nnunet_sgd(m.parameters())
    x, target = torch.randn(2, 16, 24, 24), torch.randn(2, 16, 24, 24)
    sizes = []
    for _ in range(steps):
        with torch.no_grad():
            sizes.append(m.swing(x).abs().mean().item())
        loss = ((m(x) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        sizes.append(m.swing(x).abs().mean().item())
    return sizes


def test_vocabularies_agree():
    assert VOCAB_SWING_NORMS is SWING_NORMS  # one owner: nnunet_tubeconv.vocabulary
    assert DEFAULT_BLOCK_OPTIONS["snake_swing_norm"] in SWING_NORMS


def test_no_swing_norm_starts_straight_and_grows_smoothly():
    sizes = _swing_after_steps("none", 4)
    assert sizes[0] == 0.0  # zero init: exactly straight
    assert 0 < sizes[1] < 0.01  # one nnU-Net step: a swing of the size of that step
    assert all(b > a for a, b in itertools.pairwise(sizes))  # and it grows (momentum 0.99)
    assert sizes[-1] < 0.05


def test_stage_norm_voids_the_zero_init():
    """The defect the option fixes, kept reachable: one step and the swing is at full size."""
    sizes = _swing_after_steps("stage", 1)
    assert sizes[0] == 0.0
    assert sizes[1] > 0.3


def test_modules_and_errors():
    none = DSConv(nn.Conv2d, 3, 4, axis=0, norm_op=nn.InstanceNorm2d, swing_norm="none")
    assert isinstance(none.swing_norm, nn.Identity)
    assert torch.all(none.swing_conv.weight == 0)
    assert none.swing_parameters() == [none.swing_conv.weight]
    stage = DSConv(nn.Conv2d, 3, 4, axis=0, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True})
    assert isinstance(stage.swing_norm, nn.InstanceNorm2d)  # the default keeps the old network
    assert len(stage.swing_parameters()) == 3
    assert DSConv(nn.Conv2d, 3, 4, kernel_size=1).swing_parameters() == []
    with pytest.raises(ValueError, match=r"swing_norm must be one of \['stage', 'none'\]"):
        DSConv(nn.Conv2d, 3, 4, swing_norm="batch")
    for bad in (-1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="swing_lr_scale"):
            DSConv(nn.Conv2d, 3, 4, swing_lr_scale=bad)
    block = DSCBlock(nn.Conv3d, 2, 4, 3, norm_op=nn.InstanceNorm3d, swing_norm="none", swing_lr_scale=0.5)
    assert all(isinstance(s.swing_norm, nn.Identity) and s.swing_lr_scale == 0.5 for s in block.snakes)


def test_feature_map_size_counts_what_the_swing_branch_saves():
    kw = {"norm_op": nn.InstanceNorm2d, "nonlin": nn.LeakyReLU}
    a = DSConv(nn.Conv2d, 3, 4, kernel_size=5, axis=0, **kw)
    b = DSConv(nn.Conv2d, 3, 4, kernel_size=5, axis=0, swing_norm="none", **kw)
    # no norm input to keep: one swing tensor of 4 channels (K - 1) fewer per position
    assert a.compute_conv_feature_map_size([6, 7]) - b.compute_conv_feature_map_size([6, 7]) == 4 * 42


def test_gradcheck_through_the_unnormalised_swing():
    torch.manual_seed(0)
    m = DSConv(nn.Conv2d, 2, 3, kernel_size=5, axis=1, swing_norm="none").double()
    nn.init.normal_(m.swing_conv.weight, std=0.3)
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)

    def f(x_, w_swing):
        delta = torch.tanh(torch.nn.functional.conv2d(x_, w_swing, padding=1))
        w = m.conv.weight.reshape(3, 2, 5)
        return snake_conv(x_, delta, w, m.conv.bias, 1, (0,), 1.0)

    w_swing = m.swing_conv.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, w_swing))
    # the module's own forward is that function
    torch.testing.assert_close(m(x), f(x, m.swing_conv.weight), atol=1e-6, rtol=1e-6)  # swing runs in float32


def test_block_options_validate_and_default_to_the_old_network():
    out = resolve_block_options({}, 4, 2, 2)
    assert out["snake_swing_norm"] == "stage" and out["snake_swing_lr_scale"] == 1.0
    out = resolve_block_options({"snake_swing_norm": "none", "snake_swing_lr_scale": 2}, 4, 2, 2)
    assert out["snake_swing_lr_scale"] == 2.0 and isinstance(out["snake_swing_lr_scale"], float)
    with pytest.raises(ValueError, match=r"snake_swing_norm must be one of \['stage', 'none'\]"):
        resolve_block_options({"snake_swing_norm": "group"}, 4, 2, 2)
    with pytest.raises(ValueError, match="snake_swing_lr_scale must be a finite number >= 0"):
        resolve_block_options({"snake_swing_lr_scale": -0.1}, 4, 2, 2)


def test_param_groups_and_scaled_poly_schedule():
    net = nn.Sequential(nn.Conv2d(2, 2, 3), DSConv(nn.Conv2d, 2, 2, axis=0, norm_op=nn.InstanceNorm2d,
                                                   norm_op_kwargs={"affine": True}, swing_lr_scale=0.1))
    groups = lr_scaled_param_groups(net)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    swing = {id(p) for p in net[1].swing_parameters()}
    assert {id(p) for p in groups[1]["params"]} == swing
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    assert len(lr_scaled_param_groups(nn.Sequential(nn.Conv2d(2, 2, 3), DSConv(nn.Conv2d, 2, 2)))) == 1

    opt = _nnunet_sgd(groups)
    sched = ScaledPolyLRScheduler(opt, 1e-2, 10)
    for epoch in range(3):
        sched.step(epoch)
        poly = 1e-2 * (1 - epoch / 10) ** 0.9
        assert opt.param_groups[0]["lr"] == pytest.approx(poly)
        assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * poly)


def test_trainer_optimiser_groups_and_checkpoint_round_trip(tmp_path, monkeypatch):
    plans = tiny_plans()
    stub_preprocessed(tmp_path, monkeypatch, plans)

    class nnUNetTrainerDSConvSlowSwing(nnUNetTrainerDSConv):
        block_options = MappingProxyType({"snake_swing_norm": "none", "snake_swing_lr_scale": 0.25})

    class nnUNetTrainerDSConvOld(nnUNetTrainerDSConv):
        block_options = MappingProxyType({"snake_swing_norm": "stage", "snake_swing_lr_scale": 1.0})

    def make(cls):
        t = cls({**plans, "continue_training": True}, "2d", 0, TINY_DATASET_JSON, device=torch.device("cpu"))
        t.initialize()
        return t

    t = make(nnUNetTrainerDSConvSlowSwing)
    groups = t.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 0.25]
    assert groups[1]["lr"] == pytest.approx(0.25 * groups[0]["lr"]) and groups[0]["lr"] == pytest.approx(t.initial_lr)
    snakes = [m for m in t.network.modules() if isinstance(m, DSConv)]
    assert snakes and all(isinstance(s.swing_norm, nn.Identity) for s in snakes)
    t.lr_scheduler.step(5)
    assert groups[1]["lr"] == pytest.approx(0.25 * groups[0]["lr"])
    ckpt = tmp_path / "checkpoint_latest.pth"
    t.save_checkpoint(str(ckpt))
    again = nnUNetTrainerDSConvSlowSwing({**plans, "continue_training": True}, "2d", 0, TINY_DATASET_JSON,
                                         device=torch.device("cpu"))
    again.load_checkpoint(str(ckpt))  # nnU-Net's own resume: the optimiser state holds both groups
    assert [g["lr_scale"] for g in again.optimizer.param_groups] == [1.0, 0.25]

    old = make(nnUNetTrainerDSConvOld)  # the old behaviour: one group, nnU-Net's own optimiser and scheduler
    assert len(old.optimizer.param_groups) == 1
    assert type(old.lr_scheduler).__name__ == "PolyLRScheduler"


def test_snake_trainers_default_to_the_ablation_winner_and_keep_the_old_network_reachable():
    from nnunet_tubeconv.architectures import VARIANTS
    from nnunet_tubeconv.trainers import nnUNetTrainerTubeConv

    for variant in ("dsconv", "tubeconv"):
        assert VARIANTS[variant]["options"]["snake_swing_norm"] == "none"
        assert VARIANTS[variant]["options"]["snake_swing_lr_scale"] == 0.1
    plans = tiny_plans()
    for cls in (nnUNetTrainerDSConv, nnUNetTrainerTubeConv):
        entry = cls.plans_with_architecture(plans, "2d")["configurations"]["2d"]["architecture"]
        opts = entry["arch_kwargs"]["block_options"]
        assert (opts["snake_swing_norm"], opts["snake_swing_lr_scale"]) == ("none", 0.1)

    class nnUNetTrainerDSConvStageNorm(nnUNetTrainerDSConv):
        block_options = MappingProxyType({"snake_swing_norm": "stage", "snake_swing_lr_scale": 1.0})

    entry = nnUNetTrainerDSConvStageNorm.plans_with_architecture(plans, "2d")["configurations"]["2d"]["architecture"]
    assert entry["arch_kwargs"]["block_options"]["snake_swing_norm"] == "stage"
