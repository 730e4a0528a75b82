"""The callable that submitit runs for one unit (imported only by the submitit executors: needs ``submitit``).

It is ``Checkpointable``: when SLURM signals an imminent time limit or a preemption, submitit requeues the same call,
and the requeued job finds the unit's nnU-Net checkpoints and continues with ``--c``. A unit longer than the
partition's time limit therefore still finishes, in several jobs (at most submitit's ``max_num_timeout`` requeues).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import submitit


class UnitJob(submitit.helpers.Checkpointable):
    """``UnitJob(run)(ctx)`` runs ``run(ctx)`` on the node; the executors pass their
    :func:`~nnunet_tubeconv.benchmarks.executors.run_unit_job` (pickled by reference with the job), so this module
    needs no import of the executors, which import it."""

    def __init__(self, run: Callable[[Any], str]) -> None:
        self.run = run

    def __call__(self, ctx: Any) -> str:
        return self.run(ctx)
