"""The study's store of records: ``records/<suite name>/`` holds what the page is made from, laid out as the harness
lays out a results folder (:mod:`nnunet_tubeconv.evaluation.layout`), so that ``report.load_results_dir`` reads it:

::

    records/<suite name>/suite.json
    records/<suite name>/runs/<dataset>/<configuration>/<arm>/fold_<f>_seed_<s>/record.json
    records/<suite name>/annotators/<dataset>/<row>.json       # another human against the reference
    records/<suite name>/postprocessing/<dataset>/<configuration>/<arm>/seed_<s>/scores.json
                                                               # the arm after its tube postprocessing (+pp rows)
    records/<suite name>/snake_stats/<dataset>/<configuration>/<arm>/fold_<f>_seed_<s>.json
                                                               # snake-stats of a unit with snakes (.snakes)

:func:`collect` copies those files from a harness results folder (nothing else: no logs, no predictions); a file
whose content changed in the results folder (e.g. a unit re-evaluated) replaces the stored one, an unchanged one is
left alone, so collecting again is idempotent. :func:`load_store` reads every stored suite back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_tubeconv.benchmarks.runner import ANNOTATORS_DIR, POSTPROCESSED_SCORES, POSTPROCESSING_DIR
from nnunet_tubeconv.evaluation import layout
from nnunet_tubeconv.evaluation.report import Unit, load_results_dir

from .snakes import load_snake_stats

STUDY_DIR = Path(__file__).resolve().parent
#: the repository's store (a checkout's; a wheel has no store)
STORE = STUDY_DIR / "records"
ANNOTATOR_GLOB = f"{ANNOTATORS_DIR}/*/*.json"
#: the harness's postprocessed scores (suites with ``postprocessing = true``)
POSTPROCESSED_GLOB = f"{POSTPROCESSING_DIR}/*/*/*/seed_*/{POSTPROCESSED_SCORES}"


@dataclass
class StoredSuite:
    """One suite of the store: its suite.json, its units (``report.Unit``), its annotator rows
    (``{dataset: {row: results.json object}}``) and its postprocessed scores (``{(dataset, configuration, arm):
    {seed: per-case rows}}``)."""

    folder: Path
    suite: dict[str, Any]
    units: list[Unit]
    annotators: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    postprocessed: dict[tuple[str, str, str], dict[int, list[dict[str, Any]]]] = field(default_factory=dict)
    #: ``{(dataset, configuration, arm): {(fold, seed): snake-stats JSON}}`` (:mod:`.snakes`)
    snake_stats: dict[tuple[str, str, str], dict[tuple[int, int], dict[str, Any]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.suite.get("name"))


@dataclass
class CollectSummary:
    folder: Path
    new: int = 0
    replaced: int = 0
    unchanged: int = 0
    records: int = 0


def store_name(suite_name: str) -> str:
    """The store folder of a suite: its name with anything but letters, digits, ``.``, ``_`` and ``-`` replaced."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", suite_name).strip("-.")
    if not name:
        raise ValueError(f"suite name {suite_name!r} gives no folder name")
    return name


def read_harness_suite(results_dir: Path) -> dict[str, Any]:
    """The suite.json of a harness results folder; ``ValueError``/``FileNotFoundError`` (one line) when the folder is
    not one."""
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir} is not a folder (expected a harness results folder with "
                                f"{layout.SUITE_FILE})")
    path = results_dir / layout.SUITE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{results_dir} is not a harness results folder: no {layout.SUITE_FILE} (made by "
                                "`nnunet-tubeconv benchmark SUITE -o DIR`)")
    try:
        suite = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(suite, dict) or not suite.get("name") or not isinstance(suite.get("arms"), dict):
        raise ValueError(f"{path} is not a harness suite.json (no name or arms)")
    return suite


def _copy_if_changed(src: Path, dest: Path, summary: CollectSummary) -> None:
    data = src.read_bytes()
    if dest.is_file():
        if dest.read_bytes() == data:
            summary.unchanged += 1
            return
        summary.replaced += 1
    else:
        summary.new += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)


def collect(results_dir: str | Path, store: str | Path = STORE) -> CollectSummary:
    """Copy ``suite.json``, every ``record.json``, ``annotators/*/*.json`` and the postprocessed scores of a harness
    results folder into ``store/<suite name>/`` (same relative layout). Only changed files are written."""
    src = Path(results_dir)
    suite = read_harness_suite(src)
    dest = Path(store) / store_name(str(suite["name"]))
    summary = CollectSummary(dest)
    files = [src / layout.SUITE_FILE, *sorted(src.glob(layout.RECORD_GLOB)), *sorted(src.glob(ANNOTATOR_GLOB)),
             *sorted(src.glob(POSTPROCESSED_GLOB))]
    for f in files:
        if f.is_file():
            _copy_if_changed(f, dest / f.relative_to(src), summary)
            summary.records += f.name == layout.RECORD_FILE
    return summary


def load_annotators(folder: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{dataset: {row: results}}`` of ``folder/annotators/<dataset>/<row>.json`` (unreadable files skipped)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(folder.glob(ANNOTATOR_GLOB)):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(res, dict) and res.get("per_case"):
            out.setdefault(path.parent.name, {})[path.stem] = res
    return out


def load_postprocessed(folder: Path) -> dict[tuple[str, str, str], dict[int, list[dict[str, Any]]]]:
    """``{(dataset, configuration, arm): {seed: per-case rows}}`` of ``folder/postprocessing/.../scores.json``."""
    out: dict[tuple[str, str, str], dict[int, list[dict[str, Any]]]] = {}
    for path in sorted(folder.glob(POSTPROCESSED_GLOB)):
        ds, cfg, arm, seed_dir = path.parts[-5:-1]
        try:
            res = json.loads(path.read_text())
            seed = int(seed_dir.removeprefix("seed_"))
        except (OSError, json.JSONDecodeError, ValueError):
            continue
        if isinstance(res, dict) and res.get("per_case"):
            out.setdefault((ds, cfg, arm), {})[seed] = res["per_case"]
    return out


def load_stored(folder: Path) -> StoredSuite:
    suite, units = load_results_dir(folder)
    return StoredSuite(folder, suite, units, load_annotators(folder), load_postprocessed(folder),
                       load_snake_stats(folder))


def load_store(store: str | Path = STORE) -> list[StoredSuite]:
    """Every suite of the store, sorted by folder name."""
    root = Path(store)
    if not root.is_dir():
        return []
    return [load_stored(d) for d in sorted(root.iterdir()) if (d / layout.SUITE_FILE).is_file()]


def short_name(dataset: str) -> str:
    """``Dataset902_DRIVE`` -> ``DRIVE``: the name the page shows."""
    m = re.match(r"^Dataset\d+_(.+)$", dataset)
    return m.group(1) if m else dataset


def image_name(dataset: str, kind: str) -> str:
    """The page's image file of a data set: ``results_<short name, lower case>_<kind>.png`` (kind: paired, case)."""
    return f"results_{store_name(short_name(dataset)).lower()}_{kind}.png"
