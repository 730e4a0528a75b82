"""The callable that submitit runs for one unit (imported only by the submitit executors: needs ``submitit``).

It is ``Checkpointable``: when SLURM signals an imminent time limit or a preemption, submitit requeues the same call,
and the requeued job finds the unit's nnU-Net checkpoints and continues with ``--c``. A unit longer than the
partition's time limit therefore still finishes, in several jobs (at most submitit's ``max_num_timeout`` requeues).
"""

from __future__ import annotations

import submitit
from nnunet_tubeconv.benchmarks.executors import UnitContext, run_unit_job


class UnitJob(submitit.helpers.Checkpointable):
    """``UnitJob()(ctx)`` runs :func:`~nnunet_tubeconv.benchmarks.executors.run_unit_job` on the node."""

    def __call__(self, ctx: UnitContext) -> str:
        return run_unit_job(ctx)
