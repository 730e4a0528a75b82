"""The real Triton compiler on DSConv's kernels (blocks/dsconv/triton_kernels.py): the interpreter that
unit/test_triton.py runs them under is lenient (any Python runs); the compiler is not. No GPU needed to compile."""

import pytest
import torch

from nnunet_tubeconv.blocks.dsconv import triton_backend

pytest.importorskip("triton", reason="Triton is not importable here")


def test_kernels_compile_for_an_sm90_gpu(tmp_path, monkeypatch):
    """Compile the three kernels down to a cubin for an H100-class GPU (two swing axes, bf16: the largest
    specialisation; axes, K and sizes are runtime arguments); skipped only where Triton has no CUDA backend."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    try:
        compiled = triton_backend.compile_for_gpu(capability=90, dtype=torch.bfloat16)
    except triton_backend.NoCudaBackend as exc:
        pytest.skip(str(exc))
    assert set(compiled) == {"sample_kernel", "gather_backward_kernel", "scatter_kernel"}
    assert all(size > 0 for size in compiled.values())  # bytes of cubin per kernel
