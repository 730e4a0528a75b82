"""ONNX export of every variant's network (no training): onnxruntime against PyTorch at two spatial sizes.

Networks are built as nnU-Net's inference builds them (``trainer_class.build_network_architecture(plans_manager,
configuration_manager, ..., enable_deep_supervision=False)``) from small plans made in conftest, with every
parameter randomised (the blocks' zero-initialised swing/offset branches included, so snakes really bend and
deformable kernels really move). Two sizes per network prove the spatial axes are dynamic; batch 2 the batch axis.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_plans
from nnunet_tubeconv.architectures import VARIANTS

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from nnunet_tubeconv.deploy.onnx_export import (
    DEFAULT_OPSET,
    GRID_SAMPLE_3D_OPSET,
    MAX_RELATIVE_ERROR,
    export_network,
    input_divisor,
    max_relative_error,
    read_metadata,
    run_onnx,
)
from nnunet_tubeconv.planning import VANILLA, trainer_for

VARIANT_TRAINERS = {v: trainer_for(v) for v in (VANILLA, *VARIANTS)}
# every variant in 2D; in 3D all but tubeconv (its parts are covered: dsconv's snakes, dlkdff's DFF, scse)
CASES = [(v, "2d") for v in VARIANT_TRAINERS] + [(v, "3d_fullres") for v in VARIANT_TRAINERS if v != "tubeconv"]
# 3D deformable convolution samples with grid_sample, which ONNX has in N-D only from opset 20
EXPECTED_OPSET = {("deform", "3d_fullres"): GRID_SAMPLE_3D_OPSET}


def _trainer_class(name: str):
    if name == "nnUNetTrainer":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    from nnunet_tubeconv import trainers

    return getattr(trainers, name)


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norm scales around 1), so no branch is an identity and swings are large."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith("gamma")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def _build(variant: str, configuration: str):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(tiny_plans())
    cm = pm.get_configuration(configuration)
    net = _trainer_class(VARIANT_TRAINERS[variant]).build_network_architecture(pm, cm, 1, 2, False)
    return _randomise(net), cm


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# the two largest graphs (3D snakes: 3 DSConvs x 8 moving points x 4 corners per block; 3D deformable: 27 GridSample
# per block) take 10-20 s each to export on a loaded 2-core machine
SLOW = {("dsconv", "3d_fullres"), ("deform", "3d_fullres")}
PARAMS = [pytest.param(v, c, id=f"{v}-{c}", marks=[pytest.mark.slow] if (v, c) in SLOW else []) for v, c in CASES]


@pytest.mark.parametrize(("variant", "configuration"), PARAMS)
def test_onnxruntime_matches_pytorch_at_two_sizes(tmp_path, variant, configuration):
    net, cm = _build(variant, configuration)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    forwards = {name: m.forward for name, m in net.named_modules()}
    dim = len(cm.patch_size)
    divisor = input_divisor(cm.network_arch_init_kwargs["strides"], dim)
    assert divisor == [4] * dim  # tiny plans: 3 stages, strides 1, 2, 2
    path = tmp_path / f"{variant}_{configuration}.onnx"
    opset = export_network(net, path, 1, [8] * dim, metadata={"variant": variant})
    assert opset == EXPECTED_OPSET.get((variant, configuration), DEFAULT_OPSET)
    rng = np.random.default_rng(1)
    sizes = [[8] * dim, [16, 12, 20][:dim]]  # different from each other and from the traced size in every axis
    for size in sizes:
        x = rng.standard_normal((2, 1, *size)).astype(np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        out = run_onnx(path, x)
        assert out.shape == ref.shape == (2, 2, *size)
        err = max_relative_error(ref, out)
        assert err <= MAX_RELATIVE_ERROR, f"{variant} {configuration} at {size}: relative error {err:.3g}"
    model = onnx.load(str(path))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", *[f"spatial_{i}" for i in range(dim)]]
    assert dims[1].dim_value == 1
    meta = read_metadata(path)
    assert meta["variant"] == variant and meta["opset"] == str(opset)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    # the export worked on a copy: the network's weights and forwards are untouched
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(m.forward == forwards[name] for name, m in net.named_modules())


def test_snake_networks_really_bend(tmp_path):
    """Guard against a vacuous comparison: the randomised dsconv network's snakes leave the straight line."""
    from nnunet_tubeconv.blocks.dsconv import DSConv

    net, _ = _build("dsconv", "2d")
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
