"""``nnunet-tubeconv benchmark``: vanilla nnU-Net against block variants, on the same plans, splits and budget.

For a suite (TOML file or flags; see :mod:`nnunet_tubeconv.benchmarks.suite` and ``benchmarks/suites/``) the runner

1. resolves the data sets in ``nnUNet_raw`` / ``nnUNet_preprocessed`` and, once per data set and plans (however
   many arms use them), runs nnU-Net's own ``nnUNetv2_extract_fingerprint`` / ``nnUNetv2_plan_experiment`` /
   ``nnUNetv2_preprocess`` where their outputs are missing (a data set already planned and preprocessed with the
   same plans is left alone). Plans are named by the arms (``TRAINER@PLANS``): nnU-Net's own (``nnUNetPlans``, the
   ResEnc presets ``nnUNetResEncUNet{M,L,XL}Plans``, whose ``2d`` / ``3d_fullres`` data are the default plans'),
   our memory-aware presets' (``<plans>_<variant>_<GB>G``) or any the suite maps to a planner (:func:`planner_for`);
2. writes ``splits_final.json`` once if it does not exist (nnU-Net's own ``generate_crossval_split``, seed 12345),
   so that every arm trains and validates on the same folds;
3. generates the budget/seed subclass of every arm's trainer into ``RESULTS_DIR/trainers/``
   (:mod:`nnunet_tubeconv.benchmarks.arms`);
4. runs every unit (arm x fold x seed) not yet recorded through ``nnUNetv2_train`` (one subprocess per unit),
   reuses the out-of-fold predictions nnU-Net writes into ``fold_X/validation``, evaluates them with
   :func:`nnunet_tubeconv.evaluation.evaluate_folders` and writes ``runs/.../record.json`` atomically;
5. prints a comparison table and writes ``report.md`` / ``report.html`` (``nnunet-tubeconv report``).

Killing the runner at any moment and starting it again redoes only unfinished units (continuing nnU-Net
checkpoints with ``--c``); finished records are never rewritten. ``--retry-failed`` reruns failed units.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_tubeconv.benchmarks.suite import (
    BUDGETS,
    DEVICES,
    EXECUTORS,
    Suite,
    SuiteError,
    Unit,
    expand_units,
    load_suite,
    merge_overrides,
    parse_suite,
)
from nnunet_tubeconv.evaluation.layout import PLANS_SEPARATOR, RECORD_FILE, SUITE_FILE, split_arm_spec
from nnunet_tubeconv.planning.hosts import DEFAULT_PLANS, close_plans_names, host_label, parse_preset_plans_name

PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
SPLIT_SEED = 12345  # nnU-Net's own seed for splits_final.json


# ------------------------------------------------------------------------------------------------ environment
def resolve_paths(suite: Suite) -> dict[str, str]:
    """nnU-Net's three folders: the suite's [paths] first, then the environment."""
    out, missing = {}, []
    for var in PATH_VARIABLES:
        v = suite.paths.get(var) or os.environ.get(var)
        if not v:
            missing.append(var)
        else:
            out[var] = str(Path(v).expanduser().resolve())
    if missing:
        raise SuiteError(
            f"nnU-Net folders not set: {missing}. Set the environment variables (nnU-Net's "
            "documentation/setting_up_paths.md) or give them in the suite's [paths] table"
        )
    for var in ("nnUNet_preprocessed", "nnUNet_results"):
        Path(out[var]).mkdir(parents=True, exist_ok=True)
    return out


def _dataset_folders(root: str) -> list[str]:
    p = Path(root)
    if not p.is_dir():
        return []
    return sorted(d.name for d in p.iterdir() if d.is_dir() and d.name.startswith("Dataset"))


def resolve_dataset(spec: str, paths: dict[str, str]) -> str:
    """``DatasetXXX_Name`` for an id or a name found in nnUNet_raw or nnUNet_preprocessed (``SuiteError`` listing
    the data sets there otherwise)."""
    found = sorted(set(_dataset_folders(paths["nnUNet_raw"])) | set(_dataset_folders(paths["nnUNet_preprocessed"])))
    if spec.startswith("Dataset"):
        matches = [d for d in found if d == spec]
    else:
        try:
            prefix = f"Dataset{int(spec):03d}_"
        except ValueError:
            raise SuiteError(f"data set {spec!r} is neither an integer id nor a DatasetXXX_Name") from None
        matches = [d for d in found if d.startswith(prefix)]
    if not matches:
        raise SuiteError(
            f"data set {spec!r} not found in nnUNet_raw ({paths['nnUNet_raw']}) or nnUNet_preprocessed "
            f"({paths['nnUNet_preprocessed']}); available: {found or 'none'}. Convert or generate it first "
            "(nnunet-tubeconv convert / nnunet-tubeconv synth)"
        )
    if len(matches) > 1:
        raise SuiteError(f"data set id {spec!r} is ambiguous: {matches}; give the full DatasetXXX_Name")
    return matches[0]


# ------------------------------------------------------------------------------------------------ planning
def _run_logged(cmd: list[str], env: dict[str, str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[prepare] {what} ...", flush=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, check=False, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed (exit code {r.returncode}); log {log}; tail:\n{tail}")
    print(f"[prepare] {what}: done in {time.perf_counter() - t0:.1f} s", flush=True)


def _planning_env(env: dict[str, str]) -> dict[str, str]:
    out = dict(env)
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0 (0 is fine for training:
    # it selects the single-threaded augmenter)
    if out.get("nnUNet_n_proc_DA", "").strip() == "0":
        out["nnUNet_n_proc_DA"] = "1"
    return out


_PLAN_WITH_CLASS = (
    "import importlib, sys\n"
    "from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset\n"
    "mod, _, name = sys.argv[1].rpartition('.')\n"
    "cls = getattr(importlib.import_module(mod), name)\n"
    "gpu = None if sys.argv[4] == 'none' else float(sys.argv[4])\n"
    "plan_experiment_dataset(int(sys.argv[2]), cls, gpu, overwrite_plans_name=sys.argv[3])\n"
)


def _count_cases(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return len({p.name.split(".")[0] for p in folder.iterdir() if p.suffix in (".b2nd", ".npz", ".npy")})


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def planner_for(plans: str, suite: Suite, dataset: str = "", plans_file: Path | None = None
                ) -> tuple[str, float | None]:
    """``(planner, GB or None)`` that writes ``plans``: the suite's planner for that name (nnU-Net's own for its
    plans names, ResEnc presets included), else our memory-aware preset when ``plans`` is one of its names
    (``<host plans>_<variant>_<GB>G``, planned at that GB), else a ``SuiteError`` that lists what is known."""
    if plans in suite.planners:
        return suite.planners[plans], None
    parsed = parse_preset_plans_name(plans)
    if parsed is not None:
        from nnunet_tubeconv.planning.planners import all_variants, preset_class_path

        host, variant, gb = parsed
        if variant not in all_variants():
            raise SuiteError(f"plans {plans!r} name variant {variant!r}, which does not exist; variants: "
                             f"{all_variants()}")
        return preset_class_path(host.name, variant), gb
    known = sorted(suite.planners)
    close = close_plans_names(plans, known)
    where = f"of data set {dataset} do not exist ({plans_file}) and " if plans_file is not None else ""
    raise SuiteError(
        f"plans {plans!r} {where}no planner is known for them"
        + (f" (did you mean {close}?)" if close else "")
        + f". Known plans names: {known}; our memory-aware presets' names <plans>_<variant>_<GB>G (e.g. "
        f"{DEFAULT_PLANS}_dsconv_8G, nnUNetResEncUNetLPlans_dsconv_24G); or add `[planning.planners] {plans} = "
        "\"PlannerClass\"` to the suite, or plan them yourself"
    )


def prepare_dataset(dataset: str, suite: Suite, paths: dict[str, str], env: dict[str, str], logs: Path) -> None:
    """Plan and preprocess ``dataset`` for every plans identifier of the suite's arms, where not yet done."""
    from nnunet_tubeconv.benchmarks.executors import nnunet_command

    pre = Path(paths["nnUNet_preprocessed"]) / dataset
    raw = Path(paths["nnUNet_raw"]) / dataset
    dataset_id = str(int(dataset[7:10]))
    penv = _planning_env(env)
    log = logs / f"prepare_{dataset}.log"
    num_raw_cases = None
    if (raw / "dataset.json").is_file():
        num_raw_cases = int(json.loads((raw / "dataset.json").read_text()).get("numTraining", 0)) or None
    for plans in suite.plans_identifiers():
        plans_file = pre / f"{plans}.json"
        if plans_file.is_file() and not _readable_json(plans_file):
            # nnU-Net writes plans in place: a planning killed mid-write leaves a torn file, planned again here
            print(f"[prepare] {dataset}: {plans_file.name} is not valid JSON (an interrupted planning?); planning "
                  "again", flush=True)
            plans_file.unlink()
        if not plans_file.is_file():
            planner, preset_gb = planner_for(plans, suite, dataset, plans_file)
            if not raw.is_dir():
                raise SuiteError(f"cannot plan {dataset}: raw data set {raw} does not exist")
            if not (pre / "dataset_fingerprint.json").is_file():
                _run_logged(nnunet_command("nnUNetv2_extract_fingerprint")
                            + ["-d", dataset_id, "-np", str(suite.num_processes)], penv, log,
                            f"{dataset}: nnU-Net fingerprint")
            gpu = suite.gpu_memory_target_gb if preset_gb is None else preset_gb
            if "." in planner:
                cmd = [sys.executable, "-c", _PLAN_WITH_CLASS, planner, dataset_id, plans,
                       "none" if gpu is None else str(gpu)]
            else:
                cmd = nnunet_command("nnUNetv2_plan_experiment") + ["-d", dataset_id, "-pl", planner,
                                                                     "-overwrite_plans_name", plans]
                if gpu is not None:
                    cmd += ["-gpu_memory_target", str(gpu)]
            _run_logged(cmd, penv, log, f"{dataset}: nnU-Net planning ({planner} -> {plans})")
        plans_json = json.loads(plans_file.read_text())
        configs = plans_json.get("configurations", {})
        missing_cfg = [c for c in suite.configurations if c not in configs]
        if missing_cfg:
            raise SuiteError(
                f"configuration(s) {missing_cfg} are not in {plans_file}; available: {sorted(configs)} (nnU-Net "
                "plans 3d_lowres only for large images)"
            )
        todo = []
        for c in suite.configurations:
            cfg = _resolved_configuration(configs, c)
            if cfg.get("previous_stage"):
                raise SuiteError(f"configuration {c!r} is a cascade stage; the harness does not run cascades")
            n = _count_cases(pre / cfg["data_identifier"])
            if n == 0 or (num_raw_cases is not None and n < num_raw_cases):
                todo.append(c)
        if todo or not (pre / "gt_segmentations").is_dir():
            if not raw.is_dir():
                raise SuiteError(f"cannot preprocess {dataset}: raw data set {raw} does not exist")
            todo = todo or list(suite.configurations)
            _run_logged(nnunet_command("nnUNetv2_preprocess")
                        + ["-d", dataset_id, "-plans_name", plans, "-c", *todo,
                           "-np", *[str(suite.num_processes)] * len(todo)],
                        penv, log, f"{dataset}: nnU-Net preprocessing {plans} {todo}")
        else:
            print(f"[prepare] {dataset}: {plans} {list(suite.configurations)} already preprocessed", flush=True)


def _resolved_configuration(configs: dict[str, Any], name: str) -> dict[str, Any]:
    cfg = dict(configs[name])
    seen = {name}
    while "inherits_from" in cfg:
        parent = cfg.pop("inherits_from")
        if parent in seen or parent not in configs:
            break
        seen.add(parent)
        cfg = {**configs[parent], **cfg}
    return cfg


def ensure_splits(dataset: str, suite: Suite, paths: dict[str, str]) -> list[dict[str, list[str]]]:
    """``splits_final.json``: reuse it, or create it once with nnU-Net's generator (shared by all arms)."""
    from nnunet_tubeconv.evaluation.serialise import write_json_atomic

    pre = Path(paths["nnUNet_preprocessed"]) / dataset
    path = pre / "splits_final.json"
    if path.is_file():
        splits = json.loads(path.read_text())
        if suite.num_splits is not None and len(splits) != suite.num_splits:
            raise SuiteError(
                f"{path} holds {len(splits)} splits but the suite asks for num_splits = {suite.num_splits}; remove "
                "num_splits from the suite to use the existing splits, or delete the file (all arms must share it)"
            )
    else:
        ending = json.loads((pre / "dataset.json").read_text()).get("file_ending", ".nii.gz")
        cases = sorted(p.name[: -len(ending)] for p in (pre / "gt_segmentations").iterdir() if p.name.endswith(ending))
        n = suite.num_splits or 5
        if len(cases) < n:
            raise SuiteError(f"{dataset} has {len(cases)} cases, too few for a {n}-fold split; set num_splits lower")
        from nnunetv2.utilities.crossval_split import generate_crossval_split

        splits = generate_crossval_split(cases, seed=SPLIT_SEED, n_splits=n)
        write_json_atomic(path, splits)
        print(f"[prepare] {dataset}: wrote {path.name} ({n} folds, nnU-Net's generator, seed {SPLIT_SEED})", flush=True)
    bad = [f for f in suite.folds if f >= len(splits)]
    if bad:
        raise SuiteError(f"folds {bad} do not exist in {path} ({len(splits)} splits: 0..{len(splits) - 1})")
    return splits


# ------------------------------------------------------------------------------------------------ the run
@contextmanager
def results_lock(results_dir: Path):
    """One runner per results folder (an flock, released by the OS however the runner ends)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / ".runner.lock", "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows
            pass
        except BlockingIOError:
            raise SuiteError(f"another benchmark runner is working in {results_dir}; wait for it or stop it") from None
        yield


def _write_suite_json(results_dir: Path, suite: Suite, datasets: list[str]) -> None:
    from nnunet_tubeconv.evaluation.serialise import dumps, write_json_atomic

    data = suite.to_json()
    data["datasets"] = datasets
    data["dataset_specs"] = list(suite.datasets)
    path = results_dir / SUITE_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old.get("budget_settings") not in (None, data["budget_settings"]):
            raise SuiteError(
                f"{results_dir} holds runs of budget {old.get('budget_settings')}, not "
                f"{data['budget_settings']}; use another results folder for another budget"
            )
        if dumps(old) == dumps(data):
            return
    write_json_atomic(path, data)


@dataclass
class BenchmarkOutcome:
    results_dir: Path
    units: list[Unit]
    done: int
    failed: int
    table: str
    report_html: Path | None


def run_benchmark(suite: Suite, results_dir: str | Path, retry_failed: bool = False, report: bool = True,
                  dry_run: bool = False, stream: bool = True, reevaluate: bool = False) -> BenchmarkOutcome:
    """Run every unfinished unit of ``suite`` into ``results_dir``; see the module docstring. ``reevaluate``: score
    every finished unit's kept validation predictions again (new metrics or evaluation settings) without training."""
    from nnunet_tubeconv.benchmarks import arms as arms_mod
    from nnunet_tubeconv.benchmarks.executors import make_executor, reevaluate_unit
    from nnunet_tubeconv.benchmarks.records import read_record
    from nnunet_tubeconv.trainers import trainer_folder

    results_dir = Path(results_dir).resolve()
    with results_lock(results_dir):
        paths = resolve_paths(suite)
        datasets = [resolve_dataset(d, paths) for d in suite.datasets]
        gen_dir = results_dir / "trainers"
        user_paths = arms_mod.user_ext_trainer_paths(os.environ.get("nnUNet_extTrainer"),
                                                     [gen_dir, trainer_folder()])
        env = {**suite.env, **paths, "nnUNet_extTrainer": arms_mod.ext_trainer_value(gen_dir, user_paths)}
        b = suite.budget
        print(f"nnunet-tubeconv benchmark: suite {suite.name!r} -> {results_dir}", flush=True)
        print(f"  budget {b.name}: {b.num_epochs} epochs x {b.num_iterations_per_epoch} iterations "
              f"(+{b.num_val_iterations_per_epoch} validation iterations); device {suite.device}; "
              f"executor {suite.executor.kind}", flush=True)

        _write_suite_json(results_dir, suite, datasets)
        units = expand_units(suite, datasets)
        states = {u: read_record(results_dir / u.rel_dir) for u in units}
        _check_records_match_suite(suite, states)
        n_done = sum(1 for r in states.values() if r and r["status"] == "done")
        n_failed = sum(1 for r in states.values() if r and r["status"] == "failed")
        todo = [u for u in units if states[u] is None or (states[u]["status"] == "failed" and retry_failed)]
        print(f"  units: {len(units)} ({n_done} done, {n_failed} failed"
              f"{', retried' if retry_failed and n_failed else ''}, {len(todo)} to run)", flush=True)
        if n_failed and not retry_failed:
            print("  (failed units are kept as failed; --retry-failed reruns them)", flush=True)
        if dry_run:
            for ds in datasets:
                for plans in suite.plans_identifiers():
                    if (Path(paths["nnUNet_preprocessed"]) / ds / f"{plans}.json").is_file():
                        print(f"  plans {plans} of {ds}: exist", flush=True)
                    else:
                        planner, gb = planner_for(plans, suite, ds)
                        print(f"  plans {plans} of {ds}: would be planned by {planner}"
                              f"{'' if gb is None else f' at {gb:g} GB'}", flush=True)
            for u in todo:
                print(f"  would run: {u.label()}", flush=True)
            return BenchmarkOutcome(results_dir, units, n_done, n_failed, "", None)

        if reevaluate:
            done_units = [u for u in units if states[u] is not None and states[u]["status"] == "done"]
            print(f"  re-evaluating {len(done_units)} finished units' validation predictions", flush=True)
            for ctx in unit_contexts(suite, done_units, results_dir, env, stream):
                reevaluate_unit(ctx, states[ctx.unit])
        if todo:
            # trainers before planning: a misspelt arm fails at once
            sources = {}
            for a in suite.arms.values():
                if a.trainer not in sources:
                    sources[a.trainer] = arms_mod.find_trainer(a.trainer, user_paths)
            seeds_per_trainer: dict[str, list[int]] = {}
            for name, a in suite.arms.items():
                seeds_per_trainer.setdefault(a.trainer, []).extend(suite.arm_seeds(name))
                src = sources[a.trainer]
                print(f"  arm {name}: {a.trainer} from {src.module} ({src.origin}), plans {a.plans}", flush=True)
            logs = results_dir / "logs"
            for ds in datasets:
                prepare_dataset(ds, suite, paths, {**os.environ, **env}, logs)
                ensure_splits(ds, suite, paths)
            arms_mod.write_arm_trainers(gen_dir, sources, seeds_per_trainer, b)
            print(f"  {eta_line(todo, states)}", flush=True)
            contexts = unit_contexts(suite, todo, results_dir, env, stream)
            make_executor(suite.executor, results_dir, suite.name).run(contexts)

        records = {u: read_record(results_dir / u.rel_dir) for u in units}
        annotators = evaluate_annotators(suite, datasets, results_dir, env, reevaluate)
        postprocessed = postprocess_arms(suite, units, records, results_dir, env) if suite.postprocessing else {}
        from nnunet_tubeconv.benchmarks.heldout import run_heldout

        n_test = run_heldout(suite, datasets, results_dir, env, records,
                             lambda trainer, seed: arms_mod.generated_class_name(trainer, b.name, seed), stream)
        done = sum(1 for r in records.values() if r and r["status"] == "done")
        failed = sum(1 for r in records.values() if r and r["status"] == "failed")
        table = comparison_table(suite, datasets, records, annotators, postprocessed)
        print("\n" + table, flush=True)
        for u, r in records.items():
            if r and r["status"] == "failed":
                first = (r.get("error") or "").strip().splitlines()
                print(f"FAILED {u.label()}: {first[-1] if first else 'no error text'}", flush=True)
        html = None
        if report and done:
            html = results_dir / "report.html"
            newest = max((results_dir / u.rel_dir / RECORD_FILE).stat().st_mtime for u in units if records[u])
            if todo or n_test or not html.is_file() or html.stat().st_mtime < newest:
                html = _write_report(results_dir)
            else:
                print(f"report: {html} (up to date)", flush=True)
        return BenchmarkOutcome(results_dir, units, done, failed, table, html)


def unit_contexts(suite: Suite, units: list[Unit], results_dir: Path, env: dict[str, str], stream: bool = True
                  ) -> list:
    """What each unit's run needs (picklable, for SLURM too), numbered in run order."""
    from nnunet_tubeconv.benchmarks.arms import generated_class_name
    from nnunet_tubeconv.benchmarks.executors import UnitContext
    from nnunet_tubeconv.benchmarks.records import git_commit, versions

    b = suite.budget
    commit, vers = git_commit(), versions()
    return [UnitContext(unit=u, results_dir=str(results_dir), trainer=suite.arms[u.arm].trainer,
                        generated_trainer=generated_class_name(suite.arms[u.arm].trainer, b.name, u.seed),
                        plans=suite.arms[u.arm].plans, budget=b.to_json(), device=suite.device, npz=suite.npz, env=env,
                        evaluation=dict(suite.evaluation), git_commit=commit, versions=vers, index=i,
                        total=len(units), stream=stream)
            for i, u in enumerate(units, 1)]


def eta_line(todo: list[Unit], states: dict[Unit, dict | None]) -> str:
    """The expected time of ``todo`` from the measured wall times of finished units: per unit the median of its
    arm's finished units, else the median of all finished units; none finished yet says so."""
    import statistics

    walls: dict[str, list[float]] = {}
    for u, r in states.items():
        if r and r["status"] == "done" and r.get("wall_time_s"):
            walls.setdefault(u.arm, []).append(float(r["wall_time_s"]))
    if not walls:
        return f"ETA: {len(todo)} units; no unit has finished yet, so no measured time to estimate from"
    overall = statistics.median([w for ws in walls.values() for w in ws])
    guessed = sorted({u.arm for u in todo if u.arm not in walls})
    total = sum(statistics.median(walls[u.arm]) if u.arm in walls else overall for u in todo)
    note = f"; arms without a finished unit ({', '.join(guessed)}) counted at the overall median" if guessed else ""
    return (f"ETA: {len(todo)} units, about {total / 3600:.1f} h (median wall time of the finished units per arm, "
            f"overall {overall / 60:.1f} min{note})")


def evaluate_annotators(suite: Suite, datasets: list[str], results_dir: Path, env: dict[str, str],
                        again: bool = False) -> dict[tuple[str, str], dict[str, Any]]:
    """Every ``[annotators]`` label folder scored against ``labelsTr`` on the validation cases of the suite's folds
    (once; ``again`` redoes it), written to ``RESULTS_DIR/annotators/<data set>/<row>.json``:
    ``{(data set, row): results}``."""
    from nnunet_tubeconv.benchmarks.executors import evaluate_against_references
    from nnunet_tubeconv.evaluation.serialise import write_json_atomic

    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ds in datasets:
        for name, folder in suite.annotators.items():
            path = results_dir / ANNOTATORS_DIR / ds / f"{name}.json"
            if path.is_file() and not again:
                out[ds, name] = json.loads(path.read_text())
                continue
            pred = Path(env["nnUNet_raw"]) / ds / folder
            if not pred.is_dir():
                raise SuiteError(f"annotator {name!r}: {pred} does not exist (a label folder of the raw data set, "
                                 f"e.g. labelsTr_observer2 written by `nnunet-tubeconv convert stare`)")
            splits = ensure_splits(ds, suite, {k: env[k] for k in PATH_VARIABLES})
            keys = sorted({k for f in suite.folds for k in splits[f]["val"]})
            print(f"[annotators] {ds}: {name} ({folder}) against labelsTr on {len(keys)} cases", flush=True)
            out[ds, name] = evaluate_against_references(pred, env, ds, keys, dict(suite.evaluation))
            write_json_atomic(path, out[ds, name])
    return out


#: where the harness keeps an arm's postprocessing and its scores: RESULTS_DIR/postprocessing/<ds>/<cfg>/<arm>/seed_S
POSTPROCESSING_DIR = "postprocessing"
#: the postprocessed scores of one (data set, configuration, arm, seed), below POSTPROCESSING_DIR
POSTPROCESSED_SCORES = "scores.json"
#: where the harness keeps the [annotators] rows: RESULTS_DIR/annotators/<ds>/<row>.json
ANNOTATORS_DIR = "annotators"


def baseline_noise_floors(suite: Suite, units: list[Unit], records: dict[Unit, dict | None], dataset: str,
                          configuration: str, metrics: tuple[str, ...] = ("dice", "cldice")) -> dict[str, float]:
    """The baseline's seed-to-seed noise floor per metric (``stats.noise_floor`` of its first two seeds over the
    cases both have); metrics without two seeds' results are left out (the caller's tolerance is then 0)."""
    from nnunet_tubeconv.evaluation.stats import noise_floor

    seeds = suite.arm_seeds(suite.baseline)[:2]
    per_seed: dict[int, dict[str, dict[str, float]]] = {s: {} for s in seeds}
    for u in units:
        r = records.get(u)
        if (u.arm == suite.baseline and u.seed in per_seed and u.dataset == dataset
                and u.configuration == configuration and r and r["status"] == "done"):
            for row in r["metrics"]["per_case"]:
                for m in metrics:
                    if row.get(m) is not None:
                        per_seed[u.seed].setdefault(m, {})[(row["case"], str(row["label"]))] = float(row[m])
    out = {}
    if len(seeds) == 2:
        for m in metrics:
            floor = noise_floor(per_seed[seeds[0]].get(m, {}), per_seed[seeds[1]].get(m, {}))
            if floor is not None:
                out[m] = floor
    return out


def postprocess_arms(suite: Suite, units: list[Unit], records: dict[Unit, dict | None], results_dir: Path,
                     env: dict[str, str]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """For every (data set, configuration, arm, seed) with a finished unit on each of the suite's folds: choose its
    postprocessing on those cross-validation predictions (once), apply it to each fold's validation predictions and
    score them against the same references: ``{(ds, cfg, arm, seed): {"per_case", "postprocessing"}}``, kept in
    ``RESULTS_DIR/postprocessing/<ds>/<cfg>/<arm>/seed_<S>/scores.json``. The choice sees the same cases it is
    scored on (as nnU-Net's own postprocessing): the held-out table is the unbiased one."""
    from nnunet_tubeconv.benchmarks.executors import evaluate_against_references, validation_keys
    from nnunet_tubeconv.evaluation.serialise import write_json_atomic
    from nnunet_tubeconv.postprocessing.apply import apply_to_folder
    from nnunet_tubeconv.postprocessing.determine import determine_postprocessing

    out: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    groups: dict[tuple[str, str, str, int], list[Unit]] = {}
    for u in units:
        groups.setdefault((u.dataset, u.configuration, u.arm, u.seed), []).append(u)
    for (ds, cfg, arm, seed), members in groups.items():
        if not all(records.get(u) and records[u]["status"] == "done" for u in members):
            continue
        folder = results_dir / POSTPROCESSING_DIR / ds / cfg / arm / f"seed_{seed}"
        scores_file = folder / POSTPROCESSED_SCORES
        if scores_file.is_file():
            out[ds, cfg, arm, seed] = json.loads(scores_file.read_text())
            continue
        ctxs = unit_contexts(suite, sorted(members, key=lambda u: u.fold), results_dir, env, stream=False)
        tolerance = baseline_noise_floors(suite, units, records, ds, cfg)
        print(f"[postprocessing] {ds} {cfg} {arm} seed {seed}: choosing on folds {sorted(u.fold for u in members)} "
              f"(tolerance {tolerance or 'none: the baseline lacks two seeds; 0'})", flush=True)
        pre = Path(env["nnUNet_preprocessed"]) / ds
        chosen = determine_postprocessing(ctxs[0].nnunet_fold_dir.parent, folder, folds=[u.fold for u in members],
                                          tolerance=tolerance, reference_folder=pre / "gt_segmentations")
        per_case = []
        for ctx in ctxs:
            pred = folder / f"validation_fold_{ctx.unit.fold}"
            apply_to_folder(ctx.nnunet_fold_dir / "validation", pred, folder / "postprocessing.pkl")
            keys = validation_keys(pre, ctx.unit.fold)
            per_case += evaluate_against_references(pred, env, ds, keys, dict(suite.evaluation))["per_case"]
        out[ds, cfg, arm, seed] = {"per_case": per_case, "postprocessing": chosen}
        write_json_atomic(scores_file, out[ds, cfg, arm, seed])
    return out


def _check_records_match_suite(suite: Suite, states: dict[Unit, dict | None]) -> None:
    """Refuse a results folder whose records were made by other trainers, plans or budgets under the same names."""
    for u, rec in states.items():
        if rec is None:
            continue
        arm = suite.arms[u.arm]
        have = (rec.get("trainer"), rec.get("plans"), rec.get("budget"))
        want = (arm.trainer, arm.plans, suite.budget.name)
        if have != want:
            raise SuiteError(
                f"{u.rel_dir / 'record.json'} was made with (trainer, plans, budget) = {have}, but the suite now says "
                f"{want} for arm {u.arm!r}; rename the arm or use another results folder"
            )


def _write_report(results_dir: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from nnunet_tubeconv.evaluation.report import write_report
    except ImportError as e:  # pragma: no cover - report module missing
        print(f"report: not written ({e})", flush=True)
        return None
    try:
        _md, html = write_report(results_dir)
    except Exception as e:  # noqa: BLE001 - the records are complete either way; say so and go on
        print(f"report: FAILED ({type(e).__name__}: {e}); records are complete, rerun `nnunet-tubeconv report "
              f"{results_dir}`", flush=True)
        return None
    print(f"report: {html}", flush=True)
    return Path(html)


# ------------------------------------------------------------------------------------------------ the table
_TABLE_METRICS = (("dice", "Dice"), ("cldice", "clDice"), ("hd95", "HD95"), ("nsd", "NSD"),
                  ("betti0_error", "B0 err"), ("betti1_error", "B1 err"), ("recall_thin", "thin rec"))


def _mean(values: list) -> float | None:
    v = [float(x) for x in values if x is not None]
    return sum(v) / len(v) if v else None


def _format_mean(key: str, m: float | None) -> str:
    return "-" if m is None else (f"{m:.2f}" if key in ("hd95",) or "betti" in key else f"{m:.3f}")


def comparison_table(suite: Suite, datasets: list[str], records: dict[Unit, dict | None],
                     annotators: dict[tuple[str, str], dict[str, Any]] | None = None,
                     postprocessed: dict[tuple[str, str, str, int], dict[str, Any]] | None = None) -> str:
    """Plain-text table: per (data set, configuration, arm) the mean of each metric over all validation
    (case, label) pairs of its done units, and the costs; then one row per ``[annotators]`` entry (another human
    against the reference). Statistics (paired tests, CIs) are in the report."""
    # the host column only when an arm is not on nnU-Net's default plans (keeps the usual table as it was)
    show_host = any(a.plans != DEFAULT_PLANS for a in suite.arms.values())
    header = ["arm", "trainer", *(["host"] if show_host else []), "units", *[h for _, h in _TABLE_METRICS],
              "s/iter", "peak mem", "params", "train s"]
    lines = []
    for ds in datasets:
        for cfg in suite.configurations:
            rows = []
            for arm in [suite.baseline, *[a for a in suite.arms if a != suite.baseline]]:
                recs = [r for u, r in records.items() if u.dataset == ds and u.configuration == cfg and u.arm == arm]
                done = [r for r in recs if r and r["status"] == "done"]
                per_case = [row for r in done for row in (r.get("metrics") or {}).get("per_case", [])]
                cells = [arm, suite.arms[arm].trainer, *([host_label(suite.arms[arm].plans)] if show_host else []),
                         f"{len(done)}/{len(recs)}"]
                cells += [_format_mean(key, _mean([row.get(key) for row in per_case])) for key, _ in _TABLE_METRICS]
                it = _mean([r.get("iteration_time_s") for r in done])
                mem = max([r["peak_memory_bytes"] for r in done if r.get("peak_memory_bytes")], default=None)
                par = max([r["parameters"] for r in done if r.get("parameters")], default=None)
                tr = _mean([(r.get("timing") or {}).get("training_time_s") for r in done])
                cells += ["-" if it is None else f"{it:.3f}", "-" if mem is None else f"{mem / 2 ** 30:.2f} GiB",
                          "-" if par is None else f"{par / 1e6:.2f} M", "-" if tr is None else f"{tr:.0f}"]
                rows.append(cells)
                pp = [row for (p_ds, p_cfg, p_arm, _), res in (postprocessed or {}).items()
                      if (p_ds, p_cfg, p_arm) == (ds, cfg, arm) for row in res["per_case"]]
                if pp:
                    rows.append([f"{arm} +pp", "postprocessed", *([""] if show_host else []), ""]
                                + [_format_mean(key, _mean([row.get(key) for row in pp])) for key, _ in _TABLE_METRICS]
                                + [""] * 4)
            for (a_ds, name), res in (annotators or {}).items():
                if a_ds == ds:
                    per_case = res.get("per_case", [])
                    rows.append([name, f"annotator {suite.annotators.get(name, '')}",
                                 *(["-"] if show_host else []), "-"]
                                + [_format_mean(key, _mean([row.get(key) for row in per_case]))
                                   for key, _ in _TABLE_METRICS] + ["-"] * 4)
            widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            lines.append(f"{ds} / {cfg} (budget {suite.budget.name}; means over validation cases of the folds run)")
            lines.append(fmt.format(*header))
            lines.append(fmt.format(*["-" * w for w in widths]))
            lines += [fmt.format(*r) for r in rows]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ CLI
def _arm_flag(text: str) -> tuple[str, dict[str, str]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--arm takes NAME=TRAINER or NAME=TRAINER{PLANS_SEPARATOR}PLANS, "
                                         f"got {text!r}")
    name, spec = text.split("=", 1)
    try:
        trainer, plans = split_arm_spec(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: {e}") from None
    out = {"trainer": trainer}
    if plans:
        out["plans"] = plans
    return name, out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", nargs="?", default=None, help="suite TOML file (see benchmarks/suites/); flags "
                        "below override its keys, or replace it entirely")
    parser.add_argument("-o", "--results-dir", default=None,
                        help="results folder (default: ./benchmark_results/<suite name>)")
    parser.add_argument("-d", "--datasets", nargs="+", default=None, help="data set ids or DatasetXXX_Name")
    parser.add_argument("-c", "--configurations", nargs="+", default=None, help="e.g. 2d 3d_fullres")
    parser.add_argument("-tr", "--trainers", nargs="+", default=None,
                        help="arms by trainer class name, or TRAINER@PLANS (e.g. "
                             "nnUNetTrainerDSConv@nnUNetResEncUNetMPlans) for other plans (arm name = what is "
                             "written); any nnU-Net trainer works")
    parser.add_argument("--arm", action="append", type=_arm_flag, default=None, metavar="NAME=TRAINER[@PLANS]",
                        help="a named arm (repeatable)")
    parser.add_argument("-p", "--plans", default=None, help="plans identifier for arms given with -tr")
    parser.add_argument("--baseline", default=None, help="arm the others are compared with (default: the first)")
    parser.add_argument("--arms", nargs="+", default=None, metavar="NAME",
                        help="run only these arms of the suite (the baseline always runs), e.g. the first tier of a "
                             "long suite; finished units of the others are kept and reported")
    parser.add_argument("-f", "--folds", nargs="+", type=int, default=None, help="folds of splits_final.json")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (one training each)")
    parser.add_argument("--budget", default=None, help=f"{sorted(BUDGETS)} or a [budgets.NAME] of the suite")
    parser.add_argument("--device", default=None, choices=DEVICES,
                        help="nnUNetv2_train -device (default auto: cuda, else mps, else cpu, where the unit runs)")
    parser.add_argument("--num-splits", type=int, default=None, help="folds when splits_final.json is created")
    parser.add_argument("--npz", action="store_true", default=None, help="export validation probabilities")
    parser.add_argument("--retry-failed", action="store_true", help="rerun units recorded as failed")
    parser.add_argument("--reevaluate", action="store_true",
                        help="score every finished unit's kept validation predictions again (new metrics or "
                             "[evaluation] settings; training facts kept), and the [annotators] rows")
    parser.add_argument("--no-report", action="store_true", help="do not write report.md/report.html")
    parser.add_argument("--dry-run", action="store_true", help="list the units that would run, run nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    g = parser.add_argument_group("cluster (SLURM through submitit)")
    g.add_argument("--executor", default=None, choices=EXECUTORS, help="where units run (default: local)")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-gpus-per-node", type=int, default=None)
    g.add_argument("--slurm-time", default=None, help="per-unit time limit: minutes, H:M:S or D-H:M:S")
    g.add_argument("--slurm-cpus-per-task", type=int, default=None)
    g.add_argument("--slurm-mem-gb", type=float, default=None)
    g.add_argument("--slurm-array-parallelism", type=int, default=None, help="at most this many jobs at once")


def suite_from_args(args: argparse.Namespace) -> Suite:
    """The suite of a TOML file and/or flags."""
    from nnunet_tubeconv.benchmarks.executors import parse_slurm_time

    over: dict[str, Any] = {
        "datasets": args.datasets, "configurations": args.configurations, "baseline": args.baseline,
        "folds": args.folds, "seeds": args.seeds, "budget": args.budget, "device": args.device,
        "num_splits": args.num_splits, "npz": args.npz,
    }
    arms: dict[str, Any] = {}
    for t in args.trainers or []:
        # TRAINER@PLANS is split (and checked against -p) by the suite parser
        arms[t] = {"trainer": t, **({"plans": args.plans} if args.plans and PLANS_SEPARATOR not in t else {})}
    for name, spec in args.arm or []:
        arms[name] = spec
    if arms:
        over["arms"] = arms
    try:
        timeout = parse_slurm_time(args.slurm_time)
    except ValueError as e:
        raise SuiteError(str(e)) from None
    executor = {"kind": args.executor, "slurm_partition": args.slurm_partition,
                "gpus_per_node": args.slurm_gpus_per_node, "timeout_min": timeout,
                "cpus_per_task": args.slurm_cpus_per_task, "mem_gb": args.slurm_mem_gb,
                "array_parallelism": args.slurm_array_parallelism}
    if any(v is not None for v in executor.values()):
        over["executor"] = executor
    if args.suite:
        suite = load_suite(args.suite, over)
    else:
        suite = parse_suite(merge_overrides({}, over), source=None, default_name="benchmark")
    return select_arms(suite, args.arms)


def select_arms(suite: Suite, names: list[str] | None) -> Suite:
    """``suite`` with only the arms ``names`` and its baseline (in the suite's order); ``None``: all of them."""
    if names is None:
        return suite
    unknown = [n for n in names if n not in suite.arms]
    if unknown:
        raise SuiteError(f"--arms names {unknown}, which the suite does not have; its arms: {list(suite.arms)}")
    keep = {suite.baseline, *names}
    return dataclasses.replace(suite, arms={n: a for n, a in suite.arms.items() if n in keep})


def run(args: argparse.Namespace) -> int:
    # bad input (SuiteError, TrainerNotFoundError, a missing file: exit 2) and a failed step (RuntimeError, e.g.
    # nnU-Net's planning: exit 1) are reported by the CLI
    suite = suite_from_args(args)
    results_dir = Path(args.results_dir) if args.results_dir else Path("benchmark_results") / suite.name
    out = run_benchmark(suite, results_dir, retry_failed=args.retry_failed, report=not args.no_report,
                        dry_run=args.dry_run, stream=not args.quiet, reevaluate=args.reevaluate)
    if args.dry_run:
        return 0
    print(f"{out.done}/{len(out.units)} units done, {out.failed} failed; results in {out.results_dir}", flush=True)
    return 0 if out.failed == 0 and out.done == len(out.units) else 1
