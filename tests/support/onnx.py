"""The ONNX export check of every variant's network, shared by the unit test (the smaller graphs) and the integration
test (the two largest): onnxruntime against PyTorch at two spatial sizes. Import it after
``pytest.importorskip("onnx")`` and ``pytest.importorskip("onnxruntime")``."""

from __future__ import annotations

from pathlib import Path

from nnunet_tubeconv.architectures import VARIANTS
from nnunet_tubeconv.planning import VANILLA, trainer_for
from support.networks import inference_network

VARIANT_TRAINERS = {v: trainer_for(v) for v in (VANILLA, *VARIANTS)}
# every variant in 2D; in 3D all but tubeconv (its parts are covered: dsconv's snakes, dlkdff's DFF, scse)
CASES = [(v, "2d") for v in VARIANT_TRAINERS] + [(v, "3d_fullres") for v in VARIANT_TRAINERS if v != "tubeconv"]
#: the two largest graphs (3D snakes: 3 DSConvs x 8 moving points x 4 corners per block; 3D deformable: 27
#: GridSample per block) take 10-20 s each to export on a loaded 2-core machine: integration tests
LARGE_GRAPHS = [("dsconv", "3d_fullres"), ("deform", "3d_fullres")]


def expected_opset(variant: str, configuration: str) -> int:
    """3D deformable convolution samples with grid_sample, which ONNX has in N-D only from opset 20."""
    from nnunet_tubeconv.deploy.onnx_export import DEFAULT_OPSET, GRID_SAMPLE_3D_OPSET

    return GRID_SAMPLE_3D_OPSET if (variant, configuration) == ("deform", "3d_fullres") else DEFAULT_OPSET


def check_onnxruntime_matches_pytorch(tmp_path: Path, variant: str, configuration: str) -> None:
    """Export the variant's randomised network (traced at 8 per axis), run it with onnxruntime at two other sizes
    and batch 2 against PyTorch; the graph's axes, opset and metadata; the network itself left untouched."""
    import numpy as np
    import onnx
    import torch

    from nnunet_tubeconv.deploy.onnx_export import (
        MAX_RELATIVE_ERROR,
        export_network,
        input_divisor,
        max_relative_error,
        read_metadata,
        run_onnx,
    )

    net, cm = inference_network(VARIANT_TRAINERS[variant], configuration)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    forwards = {name: m.forward for name, m in net.named_modules()}
    dim = len(cm.patch_size)
    divisor = input_divisor(cm.network_arch_init_kwargs["strides"], dim)
    assert divisor == [4] * dim  # tiny plans: 3 stages, strides 1, 2, 2
    path = tmp_path / f"{variant}_{configuration}.onnx"
    opset = export_network(net, path, 1, [8] * dim, metadata={"variant": variant})
    assert opset == expected_opset(variant, configuration)
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
