"""Do the snakes follow the vessels? ``snake-stats`` (:mod:`nnunet_tubeconv.deploy.snake_stats`) of every finished
unit whose network has DSConv snakes, stored next to the records and shown on the results page.

* :func:`unit_has_snakes` / :func:`arm_has_snakes`: which units and arms have snakes, from the record's block options
  (the harness's telemetry) or else the arm's trainer, both judged by ``architectures.places_snakes``;
* :func:`collect_snake_stats` (run by ``page collect``): for each such unit, ``snake_stats`` of its fold's model
  (``nnunet_output_folder``'s parent, that fold) over the fold's validation cases (raw images under ``--raw``, the
  references the record was scored against, else the raw ``labelsTr``), written to
  ``records/<suite>/snake_stats/<dataset>/<configuration>/<arm>/fold_<f>_seed_<s>.json`` with the SHA-256 of the
  record it measured; a stored result of the same record is not measured again;
* :func:`snake_table` (run by ``page render``, from the store alone): per arm with snakes and per snake layer, the
  adherence difference snake - straight pooled over the cases of all stored folds [95% bootstrap CI], saturation
  and same-side tilt (``snake_stats.summarise`` on the pooled cases: the statistics have one owner).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SNAKE_STATS_DIR = "snake_stats"
SNAKE_STATS_GLOB = f"{SNAKE_STATS_DIR}/*/*/*/fold_*_seed_*.json"
#: the snakes study, which defines the statistics (a link relative to docs/, where the results page is)
SNAKES_DOC = "studies/snakes.md"


# ------------------------------------------------------------------------------------------------ which arms
def record_block_options(record: dict[str, Any]) -> dict[str, Any] | None:
    """The network's block options as a record gives them (its own, or its telemetry's: the resolved options the
    trainer built with); None when it gives none that name the network's ``conv_block``."""
    for opts in (record.get("block_options"), (record.get("telemetry") or {}).get("block_options")):
        if isinstance(opts, dict) and "conv_block" in opts:
            return opts
    return None


def trainer_has_snakes(trainer: str | None) -> bool:
    """Whether a trainer of this package builds a network with snakes (False for any other trainer)."""
    from nnunet_tubeconv.architectures import places_snakes
    from nnunet_tubeconv.trainers import trainer_block_options

    return bool(trainer) and places_snakes(trainer_block_options(str(trainer)))


def unit_has_snakes(record: dict[str, Any]) -> bool:
    """Whether the record's network has DSConv snakes: its block options say so, or (none recorded) its trainer."""
    from nnunet_tubeconv.architectures import places_snakes

    opts = record_block_options(record)
    return places_snakes(opts) if opts is not None else trainer_has_snakes(record.get("trainer"))


def arm_has_snakes(spec: Any, records: list[dict[str, Any]]) -> bool:
    """An arm has snakes when one of its records says so, or (no record) its trainer builds them."""
    if records:
        return any(unit_has_snakes(r) for r in records)
    trainer = spec.get("trainer") if isinstance(spec, dict) else spec
    return trainer_has_snakes(trainer)


# ------------------------------------------------------------------------------------------------ collect
def stats_path(store_folder: Path, dataset: str, configuration: str, arm: str, fold: Any, seed: Any) -> Path:
    return Path(store_folder) / SNAKE_STATS_DIR / dataset / configuration / arm / f"fold_{fold}_seed_{seed}.json"


def record_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def measure_unit(record: dict[str, Any], raw: Path | None, ext_trainer: Path | None = None) -> dict[str, Any]:
    """``snake_stats`` of a finished unit's fold model over its validation cases (see the module docstring)."""
    from nnunet_tubeconv.deploy.model_folder import load_trained_model, resolve_model_folder
    from nnunet_tubeconv.deploy.snake_stats import snake_stats
    from nnunet_tubeconv.environ import set_environ

    if raw is None:
        raise ValueError("no raw folder (--raw or $nnUNet_raw): snake-stats needs the validation images")
    fold_dir = Path(str(record.get("nnunet_output_folder") or ""))
    if not fold_dir.is_dir():
        raise ValueError(f"nnU-Net's fold folder {fold_dir} is not there")
    images = Path(raw) / str(record["dataset"]) / "imagesTr"
    ref = (record.get("metrics") or {}).get("ref_dir")
    labels = Path(ref) if ref and Path(ref).is_dir() else Path(raw) / str(record["dataset"]) / "labelsTr"
    cases = record.get("validation_cases") or sorted({str(r["case"]) for r in (record.get("metrics") or {}).get(
        "per_case", [])})
    if not cases:
        raise ValueError("the record names no validation case")
    env = os.environ.get("nnUNet_extTrainer")
    if ext_trainer is not None and Path(ext_trainer).is_dir():   # the harness's generated arm trainers
        env = os.pathsep.join([str(ext_trainer), *([env] if env else [])])
    with set_environ(nnUNet_extTrainer=env):
        folder = resolve_model_folder(str(fold_dir.parent), str(record["fold"]))
        model = load_trained_model(folder, str(record.get("configuration") or "") or None)
        return snake_stats(model, [str(images)], str(labels), list(cases))


def collect_snake_stats(results_dir: str | Path, store_folder: str | Path, raw: str | Path | None,
                        measure: Callable[..., dict[str, Any]] = measure_unit) -> list[str]:
    """Measure every finished unit with snakes of a harness results folder whose stored result is missing or was made
    from another version of its record; one line per unit measured, skipped or failed (a failure is said, not
    raised: the records are collected all the same)."""
    from nnunet_tubeconv.evaluation import layout

    src, dest = Path(results_dir), Path(store_folder)
    lines = []
    for rec_path in sorted(src.glob(layout.RECORD_GLOB)):
        try:
            record = json.loads(rec_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("status") != "done" or not unit_has_snakes(record):
            continue
        ds, cfg, arm = str(record["dataset"]), str(record["configuration"]), str(record["arm"])
        out = stats_path(dest, ds, cfg, arm, record["fold"], record["seed"])
        name = f"snake-stats {ds} {cfg} {arm} fold {record['fold']} seed {record['seed']}"
        digest = record_sha256(rec_path)
        if out.is_file():
            try:
                if json.loads(out.read_text()).get("record_sha256") == digest:
                    lines.append(f"{name}: stored, record unchanged")
                    continue
            except (OSError, json.JSONDecodeError):
                pass
        try:
            stats = measure(record, None if raw is None else Path(raw), src / "trainers")
        except Exception as e:  # noqa: BLE001 - a model that cannot be measured must not stop the collection
            lines.append(f"{name}: not measured ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        stats = {"record_sha256": digest, "dataset": ds, "configuration": cfg, "arm": arm,
                 "fold": record["fold"], "seed": record["seed"], **stats}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(stats, indent=1))
        tmp.replace(out)
        lines.append(f"{name}: measured on {len(stats.get('cases', []))} cases -> {out}")
    return lines


# ------------------------------------------------------------------------------------------------ load
def load_snake_stats(folder: Path) -> dict[tuple[str, str, str], dict[tuple[int, int], dict[str, Any]]]:
    """``{(dataset, configuration, arm): {(fold, seed): snake-stats JSON}}`` of a stored suite (unreadable skipped)."""
    out: dict[tuple[str, str, str], dict[tuple[int, int], dict[str, Any]]] = {}
    for path in sorted(Path(folder).glob(SNAKE_STATS_GLOB)):
        ds, cfg, arm = path.parts[-4:-1]
        try:
            stats = json.loads(path.read_text())
            fold, seed = int(stats["fold"]), int(stats["seed"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if isinstance(stats.get("layers"), list):
            out.setdefault((ds, cfg, arm), {})[(fold, seed)] = stats
    return out


def pooled_layers(folds: dict[tuple[int, int], dict[str, Any]], seed: int, n_resamples: int | None = None
                  ) -> dict[int, list[dict[str, Any]]]:
    """``{seed: [layer]}``: per training seed, each snake layer's per-case values pooled over the stored folds (each
    case is validated by one fold) and ``snake_stats.summarise`` of them (``seed``: the bootstrap's)."""
    from nnunet_tubeconv.deploy.snake_stats import summarise

    by_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for (fold, run_seed), stats in sorted(folds.items()):
        layers = by_seed.setdefault(run_seed, {})
        for layer in stats["layers"]:
            entry = layers.setdefault(layer["name"], {k: v for k, v in layer.items() if k not in ("per_case",
                                                                                                 "summary")})
            entry.setdefault("per_case", {}).update(layer.get("per_case") or {})
            entry.setdefault("folds", []).append(fold)
    return {s: [{**e, "summary": summarise(e["per_case"], seed, n_resamples)} for e in layers.values()]
            for s, layers in sorted(by_seed.items())}


# ------------------------------------------------------------------------------------------------ render
def reading(s: dict[str, Any], min_cases: int) -> str:
    """What a layer's adherence difference says, in words, from its 95% CI (with fewer than ``min_cases`` cases,
    the harness's minimum for a test, it is said to be only a first look)."""
    ci = s.get("adherence_diff_ci")
    if s.get("adherence_diff") is None:
        return "no case with vessel at this layer"
    if ci is None:
        return "one case: no CI yet"
    if ci[0] > 0:
        text = "follows the vessels more than a straight kernel"
    elif ci[1] < 0:
        text = "samples less vessel than a straight kernel"
    else:
        text = "no evidence it follows the vessels better than a straight kernel"
    n = int(s.get("cases") or 0)
    return text if n >= min_cases else f"{text} (only {n} cases, fewer than the {min_cases} of a test: a first look)"


SNAKE_HEADERS = ["arm", "snake layer", "cases (folds)", "adherence snake − straight [95% CI]",
                 "adherence snake / straight", "saturated", "same-side tilt", "reading"]


def snake_table(arms: dict[str, Any], records: dict[str, list[dict[str, Any]]],
                stats: dict[str, dict[tuple[int, int], dict[str, Any]]], seed: int = 0,
                n_resamples: int | None = None, min_cases: int = 6) -> tuple[list[str], list[list[str]]]:
    """The page's "Do the snakes follow the vessels?" part for one data set, as the words above the table and its
    rows (:data:`SNAKE_HEADERS`; none when no arm has snakes): ``arms`` the suite's arms (spec by name),
    ``records`` each arm's records there, ``stats`` each arm's stored snake-stats by (fold, seed)."""
    from nnunet_tubeconv.deploy.snake_stats import SATURATION, TILT_SLOPE, ci_text, pct, signed_pct

    snake_arms = [a for a, spec in arms.items() if arm_has_snakes(spec, records.get(a, []))]
    if not snake_arms:
        return ["No arm of this suite has DSConv snakes.", ""], []
    lines = [("`nnunet-tubeconv snake-stats` of each fold's model on that fold's validation cases (the statistics: "
              f"[the snakes study]({SNAKES_DOC})). "
              "*Adherence snake − straight*: at the positions on a vessel, the fraction of the snake's outer sample "
              "points that lie on the vessel minus the same for a straight kernel, mean over the cases of all "
              "measured folds [95% bootstrap CI over cases]; above 0 the snakes bend onto the vessels, at 0 they "
              f"do no better than a straight kernel. *Saturated*: swing values with |tanh| > {SATURATION:g} (stuck, "
              f"no longer learning); *same-side tilt*: positions whose snake leans ≥ {TILT_SLOPE:g} voxel per step "
              "to the most common side (near 100%: one fixed oblique line, not a snake)."), ""]
    rows = []
    for arm in snake_arms:
        pooled = pooled_layers(stats.get(arm, {}), seed, n_resamples)
        if not pooled:
            why = "not run" if not records.get(arm) else "not measured yet"
            rows.append([arm, why, "–", "–", "–", "–", "–", "–"])
            continue
        for run_seed, layers in pooled.items():
            label = arm if len(pooled) == 1 else f"{arm} (seed {run_seed})"
            for layer in layers:
                s = layer["summary"]
                folds = ", ".join(str(f) for f in sorted(set(layer["folds"])))
                where = f"`{layer['name']}` (stage {layer.get('stage', '?')}, axis {layer.get('morph_axis', '?')})"
                rows.append([label, where, f"{s.get('cases', 0)} ({folds})",
                             f"{signed_pct(s.get('adherence_diff'))} {ci_text(s.get('adherence_diff_ci'))}",
                             f"{pct(s.get('adherence_snake'))} / {pct(s.get('adherence_straight'))}",
                             pct(s.get("saturated")), pct(s.get("constant_tilt")), reading(s, min_cases)])
    return lines, rows
