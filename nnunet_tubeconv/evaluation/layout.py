"""The benchmark results layout and the record schema, defined once (the harness writes it, the report reads it).

::

    RESULTS_DIR/
      suite.json                                                    # the resolved suite (benchmarks.suite)
      runs/<dataset>/<configuration>/<arm>/fold_<f>_seed_<s>/record.json   # one per unit, schema RECORD_SCHEMA
      runs/<dataset>/<configuration>/<arm>/test_seed_<s>/record.json       # held-out test set (imagesTs/labelsTs)
                                                                           # predicted by the arm's folds as ensemble

An arm is one trainer on one plans identifier; an arm written ``TRAINER@PLANS`` (:func:`split_arm_spec`) is named
so, which keeps the runs of one trainer on different plans (hosts) in different folders. Every record states its
``trainer`` and ``plans``, and the harness refuses a folder whose records were made with other plans under the same
arm name.

A record (``RECORD_SCHEMA``) is a JSON object with at least :data:`RECORD_KEYS` (a held-out record has ``"split":
"test"`` and ``"folds"``, the folds whose models were ensembled; ``fold`` is null); ``status`` is ``"done"`` or
``"failed"``; a done record's ``metrics`` is a results.json object (``nnunet-tubeconv/results/1``, see
:mod:`nnunet_tubeconv.evaluation.folders`). The harness may add keys (``benchmarks.records.EXTRA_KEYS``); readers
ignore what they do not know. Records and the report's ``report.json`` are written as strict JSON, crash-safe, by
:mod:`nnunet_tubeconv.evaluation.serialise`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

SUITE_FILE = "suite.json"
RUNS_DIR = "runs"
RECORD_FILE = "record.json"
RECORD_SCHEMA = "nnunet-tubeconv/record/1"
RECORD_STATUSES = ("done", "failed")
#: keys every record has (values may be null)
RECORD_KEYS = ("schema", "status", "dataset", "configuration", "arm", "trainer", "plans", "fold", "seed", "budget",
               "git_commit", "versions", "device", "wall_time_s", "iteration_time_s", "peak_memory_bytes",
               "parameters", "block_options", "curves", "metrics", "error", "started", "finished")
#: glob of every record under RESULTS_DIR
RECORD_GLOB = f"{RUNS_DIR}/*/*/*/*/{RECORD_FILE}"
_UNIT_DIR = re.compile(r"^fold_(\w+?)_seed_(\d+)$")
_TEST_DIR = re.compile(r"^test_seed_(\d+)$")
TEST_SPLIT = "test"
#: separates trainer and plans in an arm written ``TRAINER@PLANS`` (e.g. ``nnUNetTrainerDSConv@nnUNetResEncUNetMPlans``)
PLANS_SEPARATOR = "@"


def split_arm_spec(text: str) -> tuple[str, str | None]:
    """``(trainer, plans)`` of ``"TRAINER@PLANS"``; ``(trainer, None)`` of a bare trainer name."""
    trainer, sep, plans = str(text).partition(PLANS_SEPARATOR)
    if not trainer or (sep and not plans) or PLANS_SEPARATOR in plans:
        raise ValueError(f"an arm is written TRAINER or TRAINER{PLANS_SEPARATOR}PLANS (e.g. "
                         f"nnUNetTrainerDSConv{PLANS_SEPARATOR}nnUNetResEncUNetMPlans), got {text!r}")
    return trainer, (plans if sep else None)


def test_rel_dir(dataset: str, configuration: str, arm: str, seed: int) -> Path:
    """``runs/<dataset>/<configuration>/<arm>/test_seed_<s>``: the held-out test set of one arm and seed."""
    return Path(RUNS_DIR) / dataset / configuration / arm / f"test_seed_{seed}"


def parse_test_dir(name: str) -> int | None:
    """The seed of a ``test_seed_<s>`` folder name, or None."""
    m = _TEST_DIR.match(name)
    return int(m.group(1)) if m else None


def unit_dir_name(fold: int | str, seed: int) -> str:
    return f"fold_{fold}_seed_{seed}"


def unit_rel_dir(dataset: str, configuration: str, arm: str, fold: int | str, seed: int) -> Path:
    """``runs/<dataset>/<configuration>/<arm>/fold_<f>_seed_<s>`` relative to RESULTS_DIR."""
    return Path(RUNS_DIR) / dataset / configuration / arm / unit_dir_name(fold, seed)


def parse_unit_dir(name: str) -> tuple[int | str, int] | None:
    """``(fold, seed)`` of a ``fold_<f>_seed_<s>`` folder name (fold stays a string when not a number, e.g. "all"),
    or None when the name is not a unit folder."""
    m = _UNIT_DIR.match(name)
    if not m:
        return None
    f = m.group(1)
    return (int(f) if f.isdigit() else f), int(m.group(2))


def iter_units(datasets: Sequence[str], configurations: Sequence[str], arm_seeds: Mapping[str, Sequence[int]],
               folds: Sequence[int]) -> Iterator[tuple[str, str, str, int, int]]:
    """Every ``(dataset, configuration, arm, fold, seed)`` of a suite, in run order: the arms of one (data set,
    configuration, seed, fold) back to back, so a run cut short still leaves paired results."""
    all_seeds = sorted({int(s) for seeds in arm_seeds.values() for s in seeds})
    for ds in datasets:
        for cfg in configurations:
            for seed in all_seeds:
                for fold in folds:
                    for arm, seeds in arm_seeds.items():
                        if seed in {int(s) for s in seeds}:
                            yield ds, cfg, arm, fold, seed


def _name(entry: Any) -> str:
    if isinstance(entry, dict):
        for key in ("name", "dataset", "id"):
            if key in entry:
                return str(entry[key])
    return str(entry)


def suite_arm_seeds(suite: Mapping[str, Any]) -> dict[str, list[int]]:
    """``{arm: seeds}`` of a suite.json: an arm's own ``"seeds"`` or (null / absent) the suite's."""
    out = {}
    for arm, spec in suite.get("arms", {}).items():
        seeds = spec.get("seeds") if isinstance(spec, dict) else None
        out[str(arm)] = list(suite.get("seeds") or []) if seeds is None else list(seeds)
    return out


def expected_units(suite: Mapping[str, Any]) -> set[tuple[str, str, str, str, str]]:
    """``(dataset, configuration, arm, fold, seed)`` (all as strings) of every unit a suite.json asks for."""
    return {(d, c, a, str(f), str(s)) for d, c, a, f, s in iter_units(
        [_name(d) for d in suite.get("datasets", [])], [_name(c) for c in suite.get("configurations", [])],
        suite_arm_seeds(suite), list(suite.get("folds", [])))}
