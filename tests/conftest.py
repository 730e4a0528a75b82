"""What every test folder shares: the one rule that marks tests slow, and fixtures used in unit/ and integration/.

Plain helpers are in the ``support`` package (``from support.plans import tiny_plans``); fixtures used in one folder
only are in that folder's conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ is slow (real nnU-Net runs, compilers; minutes on CPU), and only those:
    ``pytest -m "not slow"`` runs what ``pytest tests/unit`` runs."""
    for item in items:
        if INTEGRATION in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the module's tests (restored after): steadier timings, no oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Every test starts with torch.compile's caches empty. Dynamo keeps at most 8 compiled versions of one code
    object (``recompile_limit``): across a whole run, the compile tests of tests/integration/ and tests/unit/ compile
    the same ``forward`` of every network many times, and a ``fullgraph=True`` compile then fails with "recompile
    limit exceeded" although each test alone passes. Costs nothing where dynamo was never imported."""
    import sys

    if "torch._dynamo" in sys.modules:
        sys.modules["torch._dynamo"].reset()
    yield
