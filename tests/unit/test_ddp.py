"""Multi-process training (DDP, gloo on CPU) of every trainer's network.

nnU-Net trains on several GPUs with ``DistributedDataParallel`` and ``find_unused_parameters=False``: a parameter
without gradient breaks the next iteration. ``tests/support/ddp_worker.py`` runs, in 2 spawned processes, one
training step of each trainer's tiny network (benchmarks/perf/variant_nets.py) on half a batch each, an SGD update and
a second step, and one single-process step on the whole batch. Every norm in these networks is per sample (nnU-Net's
InstanceNorm, the snakes' GroupNorm or no swing norm, DLK's LayerNorm), so the mean of the two ranks' gradients equals
the gradient on the concatenated batch up to float rounding. (A BatchNorm would not: its statistics are per rank.)
One spawn for all trainers: starting the two processes costs more than all the steps together.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from support import REPO_ROOT

from nnunet_tubeconv.benchmarks.perf.variant_nets import TRAINERS

WORKER = REPO_ROOT / "tests" / "support" / "ddp_worker.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    out = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run([sys.executable, str(WORKER), str(out), *TRAINERS], check=False, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("trainer", TRAINERS)
def test_ddp_step_equals_one_process_on_the_whole_batch(results, trainer):
    ranks = [torch.load(results / f"{trainer}.rank{r}.pt") for r in (0, 1)]
    single = ranks[0]["single"]
    assert single and all(g is not None for g in single.values())
    for record in ranks:
        assert record["ddp"].keys() == single.keys()
        missing = [k for k, g in record["ddp"].items() if g is None]
        assert missing == [], f"parameters without gradient break nnU-Net's DDP: {missing}"
        assert all(g is not None for g in record["ddp_second"].values())
        for k, g in record["ddp"].items():
            torch.testing.assert_close(g, single[k], rtol=1e-4, atol=1e-6, msg=k)
    largest = max((g - single[k]).abs().max().item() for k, g in ranks[0]["ddp"].items())
    print(f"{trainer}: largest |DDP - single-process| gradient difference {largest:.2g}")
    # both ranks hold the same all-reduced gradient, from different local losses
    for k, g in ranks[0]["ddp"].items():
        torch.testing.assert_close(g, ranks[1]["ddp"][k], rtol=0, atol=0, msg=k)
    assert ranks[0]["loss"] != ranks[1]["loss"]
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, ranks[0]["single_loss"], rtol=1e-5,
                               atol=1e-6)
