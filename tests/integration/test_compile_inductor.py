"""torch.compile with the full inductor CPU backend (C++ code generation) on every trainer's network: one training
step against eager, outputs and gradients (``benchmarks/studies/compile_check/compile_check.py``, which also writes
the report; 20-75 s per network on 2 cores). The ops and the AOTAutograd graphs are checked in unit/test_compile.py.
"""

from __future__ import annotations

import pytest
import torch

from nnunet_tubeconv.benchmarks.perf.variant_nets import TRAINERS
from nnunet_tubeconv.benchmarks.studies.compile_check import compile_check

torch.set_num_threads(1)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_inductor_compiles_every_variant_against_eager(trainer):
    row = compile_check.check_trainer(trainer, "inductor")
    assert row["passed"], row
