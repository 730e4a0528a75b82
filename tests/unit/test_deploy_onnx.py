"""ONNX export of every variant's network (no training): onnxruntime against PyTorch at two spatial sizes.

Networks are built as nnU-Net's inference builds them (``trainer_class.build_network_architecture(plans_manager,
configuration_manager, ..., enable_deep_supervision=False)``) from small plans made in the test, with every
parameter randomised (the blocks' zero-initialised swing/offset branches included, so snakes really bend and
deformable kernels really move). Two sizes per network prove the spatial axes are dynamic; batch 2 the batch axis.
The two largest graphs are checked in integration/test_deploy_onnx_large.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from support.networks import inference_network
from support.onnx import CASES, LARGE_GRAPHS, VARIANT_TRAINERS, check_onnxruntime_matches_pytorch

from nnunet_tubeconv.deploy.onnx_export import export_network, input_divisor, max_relative_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("variant", "configuration"),
                         [pytest.param(v, c, id=f"{v}-{c}") for v, c in CASES if (v, c) not in LARGE_GRAPHS])
def test_onnxruntime_matches_pytorch_at_two_sizes(tmp_path, variant, configuration):
    check_onnxruntime_matches_pytorch(tmp_path, variant, configuration)


def test_snake_networks_really_bend(tmp_path):
    """Guard against a vacuous comparison: the randomised dsconv network's snakes leave the straight line."""
    from nnunet_tubeconv.blocks.dsconv import DSConv

    net, _ = inference_network(VARIANT_TRAINERS["dsconv"], "2d")
    layers = [m for m in net.modules() if isinstance(m, DSConv)]
    assert layers
    x = torch.randn(1, layers[0].input_channels, 16, 16)
    coords = layers[0].snake_coordinates(x)
    swing = next(a for a in range(2) if a != layers[0].axis)
    grid = torch.arange(16.0).view(1, 1, *([16, 1] if swing == 0 else [1, 16]))
    assert (coords[:, :, swing] - grid).abs().max() > 0.5


class _Unexportable(torch.nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=2).values  # no ONNX symbolic for aten::cummax


def test_unexportable_network_gives_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)ONNX export .* failed.*cummax.*_Unexportable"):
        export_network(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), _Unexportable()),
                       tmp_path / "bad.onnx", 1, [8, 8])


def test_input_divisor_and_relative_error():
    assert input_divisor([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 1]], 3) == [4, 8, 4]
    assert input_divisor([1, 2, 2], 2) == [4, 4]
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    assert max_relative_error(ref, ref + np.array([[0.0, 0.0], [0.4, 0.0]])) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="shapes differ"):
        max_relative_error(ref, ref[0])
