"""The benchmark harness: vanilla-vs-variant runs through nnU-Net, their records and the report.

* here: the harness (``runner``, ``executors``, ``suite``, ``records``, ``arms``, ``telemetry``, ``heldout``,
  ``slurm_job``, ``demo``; suites in ``suites/``);
* :mod:`nnunet_tubeconv.benchmarks.perf`: measurement tools (``bench-blocks``, ``bench-train``,
  ``calibrate-memory``, ``gpu-check``);
* ``nnunet_tubeconv.benchmarks.studies.<study>``: one-off studies run with ``python -m``, their results beside them.

Modules that lived here before the tools and studies had their own places (:data:`MOVED`) fail to import, and
``python -m`` of them fails, with a ``ModuleNotFoundError`` that names the new module.
"""

from __future__ import annotations

import importlib.abc
import sys

#: old module -> the module it became
MOVED: dict[str, str] = {
    f"{__name__}.{old}": f"{__name__}.{new}"
    for old, new in {
        "bench_blocks": "perf.bench_blocks",
        "bench_train": "perf.bench_train",
        "realistic_plans": "perf.realistic_plans",
        "calibrate_memory": "perf.calibrate_memory",
        "gpu_check": "perf.gpu_check",
        "variant_nets": "perf.variant_nets",
        "snakes_ablation": "studies.snakes.ablation",
        "snakes_drive": "studies.snakes.drive",
        "profile_snake": "studies.snake_cost.profile_snake",
        "compile_check": "studies.compile_check.compile_check",
    }.items()
}


def moved_error(old: str) -> ModuleNotFoundError:
    """The error an import of the moved module ``old`` raises: it names the module to use instead."""
    new = MOVED[old]
    return ModuleNotFoundError(f"No module named {old!r}: it moved to {new}", name=old)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: asked only for modules no other finder has, it turns a moved one's import into
    :func:`moved_error`."""

    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            raise moved_error(fullname)


def __getattr__(name: str):
    # ``from nnunet_tubeconv.benchmarks import bench_train`` asks the package first; a moved name fails here with
    # the new module's name (Python would otherwise replace the finder's error by "cannot import name")
    if f"{__name__}.{name}" in MOVED:
        raise moved_error(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(MovedModuleFinder())
