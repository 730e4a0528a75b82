"""Benchmark suites: what to run (data sets x configurations x arms x folds x seeds) and on which budget.

A suite is a small TOML file (see ``benchmarks/suites/*.toml`` for annotated examples) or the same given as flags of
``nnunet-tubeconv benchmark``. This module parses and validates it (every error says what is wrong and what is
allowed), and holds the budgets. It imports neither torch nor nnU-Net.

Budgets shorten nnU-Net's schedule identically for every arm, vanilla included: the harness trains a generated
subclass ``<Trainer>_<budget>_s<seed>`` of each arm's trainer (see :mod:`nnunet_tubeconv.benchmarks.arms`) that sets
``num_epochs``, ``num_iterations_per_epoch`` and ``num_val_iterations_per_epoch``.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_tubeconv.evaluation.layout import PLANS_SEPARATOR, iter_units, split_arm_spec, unit_rel_dir
from nnunet_tubeconv.planning.hosts import DEFAULT_PLANS, NNUNET_PLANNERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUITE_SCHEMA = "nnunet-tubeconv/suite/1"
DEVICES = ("auto", "cuda", "cpu", "mps")
EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")
_SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
#: arm names may also hold the plans separator: an arm written TRAINER@PLANS is named so
_ARM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.@-]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Budget:
    """Training length applied to every arm: nnU-Net's epochs x iterations, set in the generated arm trainer.

    ``save_every``: epochs between nnU-Net's ``checkpoint_latest.pth`` writes (what ``--c`` resumes from); it does
    not change training, only how much a killed unit loses.
    """

    name: str
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    save_every: int = 50
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_epochs": self.num_epochs,
            "num_iterations_per_epoch": self.num_iterations_per_epoch,
            "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "save_every": self.save_every,
            "description": self.description,
        }


#: Built-in budgets. ``full`` is nnU-Net's own schedule (nnUNetTrainer: 1000 epochs x 250 + 50 iterations);
#: ``short`` is a tenth of its epochs; ``smoke`` is sized so that ``nnunet-tubeconv demo`` (two arms on a 2D synthetic
#: set, CPU, 2 cores) finishes in minutes and both arms still learn a non-trivial segmentation.
BUDGETS: dict[str, Budget] = {
    b.name: b
    for b in (
        Budget("smoke", 10, 12, 2, save_every=2, description="CPU smoke test: minutes, a non-trivial segmentation"),
        Budget("short", 100, 250, 50, save_every=10, description="a tenth of nnU-Net's epochs"),
        Budget("full", 1000, 250, 50, save_every=50, description="nnU-Net's schedule (1000 epochs)"),
    )
}

_BUDGET_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "save_every", "description")


@dataclass(frozen=True)
class Arm:
    """One arm: an nnU-Net trainer class name (any, stock nnU-Net's, ours or a user's) on one plans identifier."""

    name: str
    trainer: str
    plans: str = DEFAULT_PLANS
    seeds: tuple[int, ...] | None = None  # None: the suite's seeds

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trainer": self.trainer, "plans": self.plans}
        if self.seeds is not None:
            out["seeds"] = list(self.seeds)
        return out


@dataclass(frozen=True)
class ExecutorConfig:
    """Where units run. ``local``: one after the other in the runner's process tree (one GPU or the CPU).
    ``slurm``: one SLURM job per unit through submitit; ``submitit-local`` / ``submitit-debug``: submitit's local
    executors (same code path as ``slurm``, for trying a cluster set-up on one machine)."""

    kind: str = "local"
    slurm_partition: str | None = None
    gpus_per_node: int | None = None
    timeout_min: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)
    poll_interval_s: float = 10.0

    def to_json(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Suite:
    """A resolved suite. ``datasets`` hold what the user wrote (ids or names) until the runner resolves them."""

    name: str
    datasets: tuple[str, ...]
    configurations: tuple[str, ...]
    arms: dict[str, Arm]
    baseline: str
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    budget: Budget
    device: str = "auto"
    num_splits: int | None = None
    npz: bool = False
    planners: dict[str, str] = field(default_factory=dict)
    gpu_memory_target_gb: float | None = None
    num_processes: int = 2
    env: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    annotators: dict[str, str] = field(default_factory=dict)
    postprocessing: bool = False
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    source: str | None = None

    def arm_seeds(self, arm: str) -> tuple[int, ...]:
        s = self.arms[arm].seeds
        return self.seeds if s is None else s

    def plans_identifiers(self) -> list[str]:
        return sorted({a.plans for a in self.arms.values()})

    def to_json(self) -> dict[str, Any]:
        """The resolved suite as written to ``RESULTS_DIR/suite.json`` (read by ``nnunet-tubeconv report``)."""
        return {
            "schema": SUITE_SCHEMA,
            "name": self.name,
            "baseline": self.baseline,
            "arms": {n: a.to_json() for n, a in self.arms.items()},
            "datasets": list(self.datasets),
            "configurations": list(self.configurations),
            "folds": list(self.folds),
            "seeds": list(self.seeds),
            "budget": self.budget.name,
            "budget_settings": self.budget.to_json(),
            "device": self.device,
            "num_splits": self.num_splits,
            "npz": self.npz,
            "planners": dict(self.planners),
            "gpu_memory_target_gb": self.gpu_memory_target_gb,
            "num_processes": self.num_processes,
            "env": dict(self.env),
            "evaluation": copy.deepcopy(self.evaluation),
            "annotators": dict(self.annotators),
            "postprocessing": self.postprocessing,
            "executor": self.executor.to_json(),
            "source": self.source,
        }


# nnU-Net's own planners for its own plans names, so that arms on ResEnc presets plan themselves (our presets'
# names, <plans>_<variant>_<GB>G, are planned by our preset classes: see runner.planner_for)
DEFAULT_PLANNERS: dict[str, str] = dict(NNUNET_PLANNERS)

TOP_LEVEL_KEYS: dict[str, str] = {
    "name": "suite name (default: the file name)",
    "datasets": "list of nnU-Net data set ids or DatasetXXX_Name",
    "configurations": "list of nnU-Net configurations, e.g. ['2d'] or ['3d_fullres']",
    "arms": f"table arm-name -> trainer name (TRAINER{PLANS_SEPARATOR}PLANS for other plans, e.g. "
            f"nnUNetTrainerDSConv{PLANS_SEPARATOR}nnUNetResEncUNetMPlans), or -> {{trainer, plans, seeds}}; or a list "
            "of such trainer names",
    "baseline": "the arm every other arm is compared with (default: the first arm)",
    "folds": "list of fold indices of splits_final.json",
    "seeds": "list of integer seeds (each seed is a separate training); with one seed the baseline arm (unless it "
             "lists its own seeds) runs that seed and the next, for the noise floor",
    "budget": f"one of {sorted(BUDGETS)} or a name defined under [budgets]",
    "budgets": "tables of custom budgets: [budgets.NAME] num_epochs, num_iterations_per_epoch, ...",
    "device": f"one of {list(DEVICES)} (nnUNetv2_train -device; auto: cuda, else mps, else cpu, where the unit runs)",
    "num_splits": "folds of splits_final.json when the harness has to create it (default 5, nnU-Net's)",
    "npz": "also export softmax probabilities of the validation cases (nnUNetv2_train --npz)",
    "planning": "table: planner, planners (plans name -> planner), gpu_memory_target_gb, num_processes",
    "env": "table of extra environment variables for the nnU-Net subprocesses (strings)",
    "paths": "table: nnUNet_raw, nnUNet_preprocessed, nnUNet_results (default: the environment)",
    "evaluation": "table of evaluate_folders settings, e.g. nsd_tolerance_mm, calibre_edges",
    "postprocessing": "true: once an arm's seed has every fold, choose its tube postprocessing on those "
                      "cross-validation predictions (nnunet-tubeconv postprocess determine, tolerance = the "
                      "baseline's seed-to-seed noise floor) and score the postprocessed predictions as a row "
                      "'<arm> +pp' beside the raw one",
    "annotators": "table row-name -> label folder of the raw data set (e.g. second_human = \"labelsTr_observer2\"): "
                  "another annotator scored against labelsTr on the suite's validation cases, shown as a row",
    "executor": f"table: kind (one of {list(EXECUTORS)}), slurm_partition, gpus_per_node, timeout_min, ...",
}
_ARM_KEYS = ("trainer", "plans", "seeds")
_PLANNING_KEYS = ("planner", "planners", "gpu_memory_target_gb", "num_processes")
_PATH_KEYS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
_EXECUTOR_KEYS = (
    "kind",
    "slurm_partition",
    "gpus_per_node",
    "timeout_min",
    "cpus_per_task",
    "mem_gb",
    "array_parallelism",
    "slurm_additional_parameters",
    "poll_interval_s",
)


class SuiteError(ValueError):
    """A suite that cannot run; the message says what is wrong and what is allowed."""


def _where(source: str | None) -> str:
    return f" in {source}" if source else ""


def _unknown(keys: Sequence[str], allowed: Sequence[str], what: str, source: str | None) -> None:
    bad = [k for k in keys if k not in allowed]
    if bad:
        raise SuiteError(f"unknown {what} {bad}{_where(source)}; allowed: {list(allowed)}")


def _int_list(value: Any, what: str, source: str | None, minimum: int = 0) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise SuiteError(f"{what} must be a non-empty list of integers{_where(source)}, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise SuiteError(f"{what} must hold integers >= {minimum}{_where(source)}, got {v!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise SuiteError(f"{what} lists a value twice{_where(source)}: {out}")
    return tuple(out)


def _str_list(value: Any, what: str, source: str | None) -> tuple[str, ...]:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise SuiteError(f"{what} must be a non-empty list{_where(source)}, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise SuiteError(f"{what} must hold strings or integers{_where(source)}, got {v!r}")
        out.append(str(v))
    if len(set(out)) != len(out):
        raise SuiteError(f"{what} lists a value twice{_where(source)}: {out}")
    return tuple(out)


def _positive_int(value: Any, what: str, source: str | None, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SuiteError(f"{what} must be an integer >= {minimum}{_where(source)}, got {value!r}")
    return int(value)


def parse_budget(name: str, spec: Any, source: str | None = None) -> Budget:
    """A custom budget from a ``[budgets.NAME]`` table."""
    if not _IDENTIFIER.match(name) or "__" in name:
        raise SuiteError(
            f"budget name {name!r}{_where(source)} must be a Python identifier without '__' (it becomes part of a "
            "trainer class name)"
        )
    if not isinstance(spec, Mapping):
        raise SuiteError(f"[budgets.{name}]{_where(source)} must be a table with keys {list(_BUDGET_KEYS)}")
    _unknown(list(spec), _BUDGET_KEYS, f"key(s) of [budgets.{name}]", source)
    missing = [k for k in _BUDGET_KEYS[:3] if k not in spec]
    if missing:
        raise SuiteError(f"[budgets.{name}]{_where(source)} lacks {missing}")
    epochs = _positive_int(spec["num_epochs"], f"budgets.{name}.num_epochs", source)
    return Budget(
        name=name,
        num_epochs=epochs,
        num_iterations_per_epoch=_positive_int(spec["num_iterations_per_epoch"],
                                               f"budgets.{name}.num_iterations_per_epoch", source),
        num_val_iterations_per_epoch=_positive_int(
            spec["num_val_iterations_per_epoch"], f"budgets.{name}.num_val_iterations_per_epoch", source
        ),
        save_every=_positive_int(spec.get("save_every", min(50, max(1, epochs // 5))), f"budgets.{name}.save_every",
                                 source),
        description=str(spec.get("description", "custom budget")),
    )


def _trainer_and_plans(text: Any, what: str, source: str | None) -> tuple[str, str | None]:
    """``(trainer, plans or None)`` of ``TRAINER`` or ``TRAINER@PLANS``, validated."""
    if not isinstance(text, str):
        raise SuiteError(f"{what}{_where(source)} needs trainer = an nnU-Net trainer class name, got {text!r}")
    try:
        trainer, plans = split_arm_spec(text)
    except ValueError as e:
        raise SuiteError(f"{what}{_where(source)}: {e}") from None
    if not _IDENTIFIER.match(trainer):
        raise SuiteError(f"{what}{_where(source)} needs trainer = an nnU-Net trainer class name, got {trainer!r}")
    if plans is not None and not _CONFIG_NAME.match(plans):
        raise SuiteError(f"{what}{_where(source)}: plans must be a plans identifier, got {plans!r}")
    return trainer, plans


def _parse_arms(value: Any, source: str | None) -> dict[str, Arm]:
    if isinstance(value, (list, tuple)):
        names = [str(t) for t in value]
        if len(set(names)) != len(names):
            raise SuiteError(f"arms{_where(source)} lists an arm twice: {names}")
        value = {n: n for n in names}
    if not isinstance(value, Mapping) or not value:
        raise SuiteError(
            f"arms{_where(source)} must be a non-empty table (arm name -> trainer name or {{trainer, plans, seeds}}) "
            f"or a list of trainer names (TRAINER or TRAINER{PLANS_SEPARATOR}PLANS), got {value!r}"
        )
    arms: dict[str, Arm] = {}
    for name, spec in value.items():
        if not _ARM_NAME.match(str(name)) or str(name).count(PLANS_SEPARATOR) > 1:
            raise SuiteError(
                f"arm name {name!r}{_where(source)} must start with a letter and hold only letters, digits, '_', '.', "
                f"'-' and one '{PLANS_SEPARATOR}' (it names a folder)"
            )
        if isinstance(spec, str):
            spec = {"trainer": spec}
        if not isinstance(spec, Mapping):
            raise SuiteError(f"arm {name!r}{_where(source)} must be a trainer name or a table with keys "
                             f"{list(_ARM_KEYS)}")
        _unknown(list(spec), _ARM_KEYS, f"key(s) of arm {name!r}", source)
        trainer, at_plans = _trainer_and_plans(spec.get("trainer"), f"arm {name!r}", source)
        if at_plans is not None and "plans" in spec and spec["plans"] != at_plans:
            raise SuiteError(f"arm {name!r}{_where(source)} names plans twice: trainer {spec['trainer']!r} and plans = "
                             f"{spec['plans']!r}; give them once")
        plans = at_plans if at_plans is not None else spec.get("plans", DEFAULT_PLANS)
        if not isinstance(plans, str) or not _CONFIG_NAME.match(plans):
            raise SuiteError(f"arm {name!r}{_where(source)}: plans must be a plans identifier, got {plans!r}")
        seeds = _int_list(spec["seeds"], f"arm {name!r} seeds", source) if "seeds" in spec else None
        arms[str(name)] = Arm(str(name), trainer, plans, seeds)
    return arms


def default_baseline_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """The baseline's seeds when its arm lists none: the suite's seeds, plus the next seed when that is only one
    (two trainings of the same arm measure the seed-to-seed noise floor the verdicts are checked against)."""
    seeds = tuple(int(s) for s in seeds)
    return seeds if len(seeds) >= 2 else (seeds[0], seeds[0] + 1)


def _parse_executor(value: Any, source: str | None) -> ExecutorConfig:
    if value is None:
        return ExecutorConfig()
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, Mapping):
        raise SuiteError(f"[executor]{_where(source)} must be a table with keys {list(_EXECUTOR_KEYS)}")
    _unknown(list(value), _EXECUTOR_KEYS, "key(s) of [executor]", source)
    kind = value.get("kind", "local")
    if kind not in EXECUTORS:
        raise SuiteError(f"executor kind {kind!r}{_where(source)} is unknown; allowed: {list(EXECUTORS)}")
    kw: dict[str, Any] = {"kind": kind}
    for k in ("gpus_per_node", "timeout_min", "cpus_per_task", "array_parallelism"):
        if value.get(k) is not None:
            kw[k] = _positive_int(value[k], f"executor.{k}", source, minimum=0 if k == "gpus_per_node" else 1)
    if value.get("mem_gb") is not None:
        if isinstance(value["mem_gb"], bool) or not isinstance(value["mem_gb"], (int, float)) or value["mem_gb"] <= 0:
            raise SuiteError(f"executor.mem_gb{_where(source)} must be a positive number, got {value['mem_gb']!r}")
        kw["mem_gb"] = float(value["mem_gb"])
    if value.get("slurm_partition") is not None:
        kw["slurm_partition"] = str(value["slurm_partition"])
    if value.get("slurm_additional_parameters") is not None:
        if not isinstance(value["slurm_additional_parameters"], Mapping):
            raise SuiteError(f"executor.slurm_additional_parameters{_where(source)} must be a table")
        kw["slurm_additional_parameters"] = dict(value["slurm_additional_parameters"])
    if value.get("poll_interval_s") is not None:
        kw["poll_interval_s"] = float(value["poll_interval_s"])
    return ExecutorConfig(**kw)


def _parse_budget_choice(data: Mapping[str, Any], source: str | None) -> Budget:
    """The budget the suite names: a built-in one or one of its own ``[budgets.NAME]``."""
    budgets = dict(BUDGETS)
    custom = data.get("budgets", {})
    if not isinstance(custom, Mapping):
        raise SuiteError(f"[budgets]{_where(source)} must hold tables [budgets.NAME]")
    for bname, spec in custom.items():
        if bname in BUDGETS:
            raise SuiteError(f"[budgets.{bname}]{_where(source)} redefines a built-in budget; pick another name")
        budgets[bname] = parse_budget(bname, spec, source)
    budget_name = data.get("budget", "smoke")
    if budget_name not in budgets:
        raise SuiteError(f"unknown budget {budget_name!r}{_where(source)}; allowed: {sorted(budgets)}")
    return budgets[budget_name]


def _parse_planning(value: Any, source: str | None) -> tuple[dict[str, str], float | None, int]:
    """``[planning]``: the planner of every plans name, the GPU memory target and the planning processes."""
    planning = value
    if not isinstance(planning, Mapping):
        raise SuiteError(f"[planning]{_where(source)} must be a table with keys {list(_PLANNING_KEYS)}")
    _unknown(list(planning), _PLANNING_KEYS, "key(s) of [planning]", source)
    planners = dict(DEFAULT_PLANNERS)
    if "planner" in planning:
        planners["nnUNetPlans"] = str(planning["planner"])
    extra = planning.get("planners", {})
    if not isinstance(extra, Mapping):
        raise SuiteError(f"planning.planners{_where(source)} must be a table plans-name -> planner class")
    planners.update({str(k): str(v) for k, v in extra.items()})
    gpu_target = planning.get("gpu_memory_target_gb")
    if gpu_target is not None and (isinstance(gpu_target, bool) or not isinstance(gpu_target, (int, float))):
        raise SuiteError(f"planning.gpu_memory_target_gb{_where(source)} must be a number, got {gpu_target!r}")
    num_processes = _positive_int(planning.get("num_processes", 2), "planning.num_processes", source)
    return planners, None if gpu_target is None else float(gpu_target), num_processes


def _parse_paths(value: Any, source: str | None) -> dict[str, str]:
    """``[paths]``, each resolved against the suite file's folder (the working directory without a file)."""
    if not isinstance(value, Mapping):
        raise SuiteError(f"[paths]{_where(source)} must be a table with keys {list(_PATH_KEYS)}")
    _unknown(list(value), _PATH_KEYS, "key(s) of [paths]", source)
    base = Path(source).parent if source else Path.cwd()
    return {k: str((base / str(v)).resolve()) for k, v in value.items()}


def _parse_evaluation(value: Any, source: str | None) -> dict[str, Any]:
    """``[evaluation]``: settings of the metrics, checked now so that a typo fails before hours of training."""
    from nnunet_tubeconv.evaluation.metrics import MetricSettings

    if not isinstance(value, Mapping):
        raise SuiteError(f"[evaluation]{_where(source)} must be a table of evaluate_folders settings")
    allowed = list(MetricSettings.__dataclass_fields__)
    _unknown(list(value), allowed, "key(s) of [evaluation]", source)
    try:
        MetricSettings(**value)
    except (TypeError, ValueError) as e:
        raise SuiteError(f"[evaluation]{_where(source)}: {e}") from None
    return dict(value)


def _parse_annotators(value: Any, arms: Mapping[str, Arm], source: str | None) -> dict[str, str]:
    """``[annotators]``: row name -> a label folder of the raw data set, scored against ``labelsTr``."""
    if not isinstance(value, Mapping):
        raise SuiteError(f"[annotators]{_where(source)} must be a table row-name -> label folder of the raw data set, "
                         'e.g. second_human = "labelsTr_observer2"')
    out = {}
    for name, folder in value.items():
        if not _SAFE_NAME.match(str(name)) or name in arms:
            raise SuiteError(f"annotator row {name!r}{_where(source)} must be a name (letters, digits, '_.-') that is "
                             f"not an arm's ({list(arms)})")
        if not isinstance(folder, str) or not _SAFE_NAME.match(folder) or folder == "labelsTr":
            raise SuiteError(f"annotator {name!r}{_where(source)} must name a label folder of the raw data set other "
                             f"than labelsTr (e.g. \"labelsTr_observer2\"), got {folder!r}")
        out[str(name)] = folder
    return out


def _check_top_level(data: Any, source: str | None, default_name: str) -> str:
    """The suite's name, once its top level has only known keys and all the required ones."""
    if not isinstance(data, Mapping):
        raise SuiteError(f"a suite must be a table{_where(source)}, got {type(data).__name__}")
    _unknown(list(data), list(TOP_LEVEL_KEYS), "top-level key(s)", source)
    missing = [k for k in ("datasets", "configurations", "arms") if k not in data]
    if missing:
        raise SuiteError(
            f"suite{_where(source)} lacks {missing}; a suite needs at least datasets, configurations and arms "
            "(all keys: " + "; ".join(f"{k}: {v}" for k, v in TOP_LEVEL_KEYS.items()) + ")"
        )
    name = str(data.get("name", default_name))
    if not _SAFE_NAME.match(name):
        raise SuiteError(f"suite name {name!r}{_where(source)} must start with a letter: letters, digits, '_.-'")
    return name


def parse_suite(data: Mapping[str, Any], source: str | None = None, default_name: str = "benchmark") -> Suite:
    """Validate a suite given as a dict (a parsed TOML file, or flags turned into one).

    Raises :class:`SuiteError` (a ``ValueError``) naming the offending key and listing what is allowed.
    """
    name = _check_top_level(data, source, default_name)
    datasets = _str_list(data["datasets"], "datasets", source)
    configurations = _str_list(data["configurations"], "configurations", source)
    for c in configurations:
        if not _CONFIG_NAME.match(c):
            raise SuiteError(f"configuration {c!r}{_where(source)} is not a valid nnU-Net configuration name")
    arms = _parse_arms(data["arms"], source)
    baseline = str(data.get("baseline", next(iter(arms))))
    if baseline not in arms:
        raise SuiteError(f"baseline {baseline!r}{_where(source)} is not an arm; arms are {list(arms)}")
    folds = _int_list(data.get("folds", [0]), "folds", source)
    seeds = _int_list(data.get("seeds", [0]), "seeds", source)
    base = arms[baseline]
    if base.seeds is None and len(seeds) == 1:
        # the noise floor needs the baseline twice: unless the baseline arm lists its own seeds, it runs two
        arms[baseline] = Arm(base.name, base.trainer, base.plans, default_baseline_seeds(seeds))
    budget = _parse_budget_choice(data, source)

    device = data.get("device", "auto")
    if device not in DEVICES:
        raise SuiteError(f"device {device!r}{_where(source)} is not allowed; allowed: {list(DEVICES)}")
    num_splits = data.get("num_splits")
    if num_splits is not None:
        num_splits = _positive_int(num_splits, "num_splits", source, minimum=2)
        bad = [f for f in folds if f >= num_splits]
        if bad:
            raise SuiteError(f"folds {bad}{_where(source)} do not exist in a {num_splits}-fold split "
                             f"(0..{num_splits - 1})")
    npz = data.get("npz", False)
    if not isinstance(npz, bool):
        raise SuiteError(f"npz{_where(source)} must be true or false, got {npz!r}")
    planners, gpu_target, num_processes = _parse_planning(data.get("planning", {}), source)
    env = data.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(v, (str, int, float)) for v in env.values()):
        raise SuiteError(f"[env]{_where(source)} must be a table of strings (environment variables)")
    resolved_paths = _parse_paths(data.get("paths", {}), source)
    evaluation = _parse_evaluation(data.get("evaluation", {}), source)
    annotators = _parse_annotators(data.get("annotators", {}), arms, source)
    postprocessing = data.get("postprocessing", False)
    if not isinstance(postprocessing, bool):
        raise SuiteError(f"postprocessing{_where(source)} must be true or false, got {postprocessing!r}")

    return Suite(
        name=name,
        datasets=datasets,
        configurations=configurations,
        arms=arms,
        baseline=baseline,
        folds=folds,
        seeds=seeds,
        budget=budget,
        device=device,
        num_splits=num_splits,
        npz=npz,
        planners=planners,
        gpu_memory_target_gb=gpu_target,
        num_processes=num_processes,
        env={str(k): str(v) for k, v in env.items()},
        paths=resolved_paths,
        evaluation=evaluation,
        annotators=annotators,
        postprocessing=postprocessing,
        executor=_parse_executor(data.get("executor"), source),
        source=source,
    )


def read_suite_file(path: str | Path) -> dict[str, Any]:
    """The raw table of a suite TOML file (``SuiteError`` if missing or not TOML)."""
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"suite file {p} does not exist")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"suite file {p} is not valid TOML: {e}") from None


def load_suite(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Suite:
    """Parse a suite TOML file; ``overrides`` (e.g. from flags) replace its top-level keys."""
    data = read_suite_file(path)
    if overrides:
        data = merge_overrides(data, overrides)
    return parse_suite(data, source=str(Path(path).resolve()), default_name=Path(path).stem)


def merge_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys of ``overrides`` replace those of ``data``; tables (executor, planning, env, paths) merge."""
    out = copy.deepcopy(dict(data))
    for k, v in overrides.items():
        if v is None:
            continue
        if k in ("executor", "planning", "env", "paths", "evaluation", "budgets") and isinstance(v, Mapping):
            base = out.get(k, {})
            if k == "executor" and isinstance(base, str):
                base = {"kind": base}
            merged = dict(base) if isinstance(base, Mapping) else {}
            merged.update({kk: vv for kk, vv in v.items() if vv is not None})
            out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass(frozen=True, order=True)
class Unit:
    """One unit of work: one arm trained and validated on one fold with one seed."""

    dataset: str  # resolved DatasetXXX_Name
    configuration: str
    arm: str
    fold: int
    seed: int

    @property
    def rel_dir(self) -> Path:
        return unit_rel_dir(self.dataset, self.configuration, self.arm, self.fold, self.seed)

    def label(self) -> str:
        return f"{self.arm} | {self.dataset} {self.configuration} | fold {self.fold} seed {self.seed}"


def expand_units(suite: Suite, dataset_names: Sequence[str]) -> list[Unit]:
    """Every unit, ordered so that the arms of one (data set, configuration, fold, seed) run back to back: a run cut
    short still leaves paired results."""
    arm_seeds = {a: suite.arm_seeds(a) for a in suite.arms}
    return [Unit(*u) for u in iter_units(dataset_names, suite.configurations, arm_seeds, suite.folds)]
