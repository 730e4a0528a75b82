"""ONNX export of the two largest graphs, the 3D snake and 3D deformable networks: onnxruntime against PyTorch at two
spatial sizes, as unit/test_deploy_onnx.py checks the others (10-20 s of export each on a loaded 2-core machine)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from support.onnx import LARGE_GRAPHS, check_onnxruntime_matches_pytorch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("variant", "configuration"), [pytest.param(v, c, id=f"{v}-{c}") for v, c in LARGE_GRAPHS])
def test_onnxruntime_matches_pytorch_at_two_sizes(tmp_path, variant, configuration):
    check_onnxruntime_matches_pytorch(tmp_path, variant, configuration)
