"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(params=["native", "pytorch"])
def implementation(request, monkeypatch) -> str:
    """Run the test with the compiled CPU kernels (``cpu_kernels.c``), then with the PyTorch implementation (the
    fallback, and the code that runs on GPU); skipped for the kernels where they do not compile."""
    from nnunet_tubeconv.blocks.dsconv import cpu_backend

    if request.param == "pytorch":
        monkeypatch.setattr(cpu_backend, "_library", lambda: None)
    elif cpu_backend._library() is None:
        pytest.skip(f"no compiled CPU kernels here: {cpu_backend.status()}")
    return request.param


@pytest.fixture
def restore_torch_threads() -> Iterator[int]:
    """For a test whose code sets torch's thread count (bench-train, the profiler, ``--threads``): the count is put
    back afterwards. Returns the count before the test."""
    import torch

    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)
