"""Networks the tests build: from an architecture entry as ``get_network_from_plans`` builds it, as nnU-Net's
inference builds a trainer's network from plans (every parameter random), and vanilla networks with DSConv layers put
in by hand."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

from support.plans import tiny_plans


def build(entry: dict, in_ch: int = 1, out_ch: int = 3, ds: bool = True, init: bool = True):
    """The network of an architecture entry (JSON form), as nnU-Net's ``get_network_from_plans`` builds it."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"], entry["_kw_requires_import"],
                                  in_ch, out_ch, allow_init=init, deep_supervision=ds)


def trainer_class(name: str) -> type:
    """nnU-Net's ``nnUNetTrainer`` or one of ours, by class name."""
    if name == "nnUNetTrainer":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    from nnunet_tubeconv import trainers

    return getattr(trainers, name)


def randomise(net, seed: int = 0):
    """Every parameter random (norm scales around 1), so no branch is an identity and swings are large; eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("gamma")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def inference_network(trainer: str, configuration: str):
    """``trainer``'s network for a configuration of the tiny plans, built as nnU-Net's inference builds it
    (``build_network_architecture(..., enable_deep_supervision=False)``), every parameter random (:func:`randomise`);
    returns the network and its configuration manager."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(tiny_plans())
    cm = pm.get_configuration(configuration)
    net = trainer_class(trainer).build_network_architecture(pm, cm, 1, 2, False)
    return randomise(net), cm


def with_snakes(configuration: str, placements: Sequence[tuple[str, int]]) -> SimpleNamespace:
    """A trained model's stand-in: the vanilla network of the tiny plans whose named conv stacks (``placements``:
    ``(module path, morph axis)``) get a DSConv (random swing) as their last conv, with what the deploy code reads
    from a model folder (plans and configuration managers, dataset.json, trainer name)."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch import nn

    from nnunet_tubeconv.blocks.dsconv import DSConv

    torch.manual_seed(0)
    pm = PlansManager(tiny_plans())
    cm = pm.get_configuration(configuration)
    dim = len(cm.patch_size)
    net = nnUNetTrainer.build_network_architecture(pm, cm, 1, 2, False)
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    for path, axis in placements:
        stack = net.get_submodule(path)
        c = stack.convs[-1].conv.out_channels
        snake = DSConv(conv, c, c, kernel_size=5, axis=axis, norm_op=norm, norm_op_kwargs={"affine": True},
                       nonlin=nn.LeakyReLU)
        nn.init.normal_(snake.swing_conv.weight, std=0.5)
        stack.convs[-1] = snake
    return SimpleNamespace(network=net.eval(), plans_manager=pm, configuration_manager=cm, dim=dim,
                           dataset_json={"channel_names": {"0": "x"}, "labels": {"background": 0, "vessel": 1},
                                         "file_ending": ".nii.gz"}, trainer_name="test")
