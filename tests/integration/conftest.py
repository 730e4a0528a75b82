"""Fixtures of the integration tests (every test here is marked slow by tests/conftest.py)."""

from __future__ import annotations

import pytest
from support import e2e


@pytest.fixture(scope="session")
def e2e_dataset(tmp_path_factory) -> dict:
    """The end-to-end workspace shared by test_e2e_nnunet.py and test_e2e_resenc.py
    (:func:`~support.e2e.planned_synthetic_dataset`), planned once per session; the ResEnc presets reuse its
    preprocessed 2d / 3d_fullres data, as nnU-Net's ResEnc planners do."""
    return e2e.planned_synthetic_dataset(tmp_path_factory.mktemp("e2e"), e2e.DATASET_ID, e2e.SHAPE, 5,
                                         e2e.CONFIGURATIONS)
