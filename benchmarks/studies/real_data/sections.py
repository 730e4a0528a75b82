"""The generated part of docs/results.md, made from the study's store only (:mod:`.store`), with the harness's
statistics (:mod:`nnunet_tubeconv.evaluation.report` and :mod:`~nnunet_tubeconv.evaluation.stats`: ``analyse``,
``compare_arms``, the verdict rules, Holm, the noise floor, ``across_datasets``); nothing here tests anything
itself.

Per data set: a status table (every arm of the suite, "not run" where it has no record), the arm table (mean and
95% bootstrap CI over cases of each metric, costs) with the annotator rows, the paired verdicts against vanilla,
Skeleton Recall and Wide (one Holm family per comparator; vanilla's seed-to-seed noise floor for every comparator),
the calibre-band recall (shown, not tested), the snake-stats of the arms with snakes (:mod:`.snakes`), the per-case
differences figure and the case image; then the summary
across data sets and what was found, in words, from the verdicts alone.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_tubeconv.evaluation import layout
from nnunet_tubeconv.evaluation import stats as st
from nnunet_tubeconv.evaluation.report import (
    METRIC_LABELS,
    GroupAnalysis,
    Unit,
    across_datasets,
    analyse,
    arrow,
    figure_differences,
    fmt_p,
    fmt_value,
    label_key,
    seed_mean,
    verdict_text,
)

from .snakes import SNAKE_HEADERS, snake_table
from .store import StoredSuite, image_name, short_name

PAGE_COMMAND = "python -m nnunet_tubeconv.benchmarks.studies.real_data.page"
#: the comparators besides the suite's baseline, found by trainer, in this order
COMPARATOR_TRAINERS = ("nnUNetTrainerSkeletonRecall", "nnUNetTrainerWide")
#: the arm table's metric columns, in this order (those the records have); Betti-2 only in 3D
TABLE_METRICS = ("dice", "cldice", "hd95", "nsd", "betti0_error", "betti1_error", "betti2_error",
                 "betti0_error_filtered")
CALIBRE_METRICS = ("recall_thin", "recall_medium", "recall_thick")


@dataclass
class Settings:
    alpha: float = st.ALPHA
    n_resamples: int = st.N_RESAMPLES
    seed: int = 0
    min_pairs: int = st.MIN_PAIRS
    n_permutations: int = st.N_PERMUTATIONS


@dataclass
class Family:
    """One comparator's Holm family: every arm with results (but vanilla and earlier comparators) against it."""

    comparator: str
    comparisons: list[st.PairedComparison]

    def get(self, arm: str, metric: str) -> st.PairedComparison | None:
        return next((c for c in self.comparisons if c.variant == arm and c.metric == metric), None)

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(c.variant for c in self.comparisons))


@dataclass
class DataSet:
    """One (suite, data set, configuration) of the page."""

    suite: dict[str, Any]
    dataset: str
    configuration: str
    units: list[Unit]
    stored: Path | None
    annotators: dict[str, dict[str, Any]] = field(default_factory=dict)
    postprocessed: dict[str, dict[int, list[dict[str, Any]]]] = field(default_factory=dict)   # arm -> seed -> rows
    snake_stats: dict[str, dict[tuple[int, int], dict[str, Any]]] = field(default_factory=dict)  # arm -> stats
    groups: list[GroupAnalysis] = field(default_factory=list)
    families: list[list[Family]] = field(default_factory=list)    # per group

    @property
    def title(self) -> str:
        return short_name(self.dataset)

    @property
    def baseline(self) -> str:
        return str(self.suite.get("baseline"))


# ------------------------------------------------------------------------------------------------ analysis
def comparators(suite: dict[str, Any]) -> list[str]:
    """The baseline, then the arms of :data:`COMPARATOR_TRAINERS` (suite order within a trainer)."""
    arms = suite.get("arms", {})
    out = [str(suite.get("baseline"))]
    for trainer in COMPARATOR_TRAINERS:
        out += [str(a) for a, spec in arms.items() if isinstance(spec, dict) and spec.get("trainer") == trainer
                and str(a) not in out]
    return out


def comparator_families(g: GroupAnalysis, suite: dict[str, Any], s: Settings) -> list[Family]:
    """The baseline's family is ``analyse``'s; each further comparator gets ``stats.compare_arms`` on the arms not
    yet compared with it (the baseline and earlier comparators left out: their comparison is already in an earlier
    family), with the baseline's two seeds as the repeats, so the noise floor is vanilla's run-to-run noise whatever
    the comparator."""
    baseline = str(suite.get("baseline"))
    if baseline not in g.values:
        return []
    out = [Family(baseline, g.comparisons)]
    seeds = sorted(g.seed_values.get(baseline, {}))
    repeats = [g.seed_values[baseline][x] for x in seeds[:2]] if len(seeds) >= 2 else []
    expected = {k for a in g.arms for k in g.values[a]}
    done = [baseline]
    for comp in comparators(suite)[1:]:
        if comp not in g.values:
            continue
        values = {comp: g.values[comp], **{a: g.values[a] for a in g.arms if a not in done and a != comp}}
        done.append(comp)
        if len(values) < 2:
            continue
        out.append(Family(comp, st.compare_arms(values, comp, g.metrics, repeats, s.alpha, s.n_resamples, s.seed,
                                                s.min_pairs, expected=expected, n_permutations=s.n_permutations)))
    return out


def analyse_dataset(suite: dict[str, Any], units: list[Unit], dataset: str, configuration: str, stored: Path | None,
                    annotators: dict[str, dict[str, Any]], s: Settings,
                    postprocessed: dict[str, dict[int, list[dict[str, Any]]]] | None = None,
                    snake_stats: dict[str, dict[tuple[int, int], dict[str, Any]]] | None = None) -> DataSet:
    mine = [u for u in units if u.dataset == dataset and u.configuration == configuration]
    groups = analyse(suite, mine, s.n_resamples, s.seed, s.alpha, s.min_pairs, n_permutations=s.n_permutations)
    return DataSet(suite, dataset, configuration, mine, stored, annotators, postprocessed or {}, snake_stats or {},
                   groups, [comparator_families(g, suite, s) for g in groups])


def merged_suite(stored: dict[str, Any], planned: dict[str, Any] | None) -> dict[str, Any]:
    """The stored suite.json with every arm of the planned suite file too (a run of some tiers, ``--arms``, writes
    only the arms it ran into suite.json; the others are still the suite's, to be listed as not run). The planned
    file's arm order first; an arm's stored spec wins."""
    if not planned:
        return stored
    arms = {a: stored["arms"].get(a, spec) for a, spec in planned.get("arms", {}).items()}
    arms.update({a: spec for a, spec in stored.get("arms", {}).items() if a not in arms})
    return {**stored, "arms": arms}


def collect_datasets(stored: list[StoredSuite], planned: list[dict[str, Any]], s: Settings) -> list[DataSet]:
    """One :class:`DataSet` per (suite, data set, configuration): the planned suites' order first (a planned suite
    without a store is listed with every arm not run; a stored one gets the planned file's arms it lacks, see
    :func:`merged_suite`), then stored suites that were not planned."""
    by_name = {x.name: x for x in stored}
    names = list(dict.fromkeys([str(p.get("name")) for p in planned] + [x.name for x in stored]))
    plan_by_name = {str(p.get("name")): p for p in planned}
    out = []
    for name in names:
        st_suite = by_name.get(name)
        suite = merged_suite(st_suite.suite, plan_by_name.get(name)) if st_suite else plan_by_name[name]
        for ds in suite.get("datasets", []):
            for cfg in suite.get("configurations", []):
                pp = {arm: seeds for (p_ds, p_cfg, arm), seeds in (st_suite.postprocessed if st_suite else {}).items()
                      if (p_ds, p_cfg) == (str(ds), str(cfg))}
                snakes = {arm: folds for (p_ds, p_cfg, arm), folds in (st_suite.snake_stats if st_suite else {}).items()
                          if (p_ds, p_cfg) == (str(ds), str(cfg))}
                out.append(analyse_dataset(suite, st_suite.units if st_suite else [], str(ds), str(cfg),
                                           st_suite.folder if st_suite else None,
                                           (st_suite.annotators if st_suite else {}).get(str(ds), {}), s, pp, snakes))
    return out


# ----------------------------------------------------------------------------------------------- formatting
def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def esc(t: str) -> str:
        return str(t).replace("|", "\\|").replace("\n", " ")

    return (["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
            + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows] + [""])


def signed(v: float, metric: str) -> str:
    text = fmt_value(v, metric)
    return ("+" + text) if isinstance(v, float) and math.isfinite(v) and v > 0 else text


def mean_ci(values, metric: str, s: Settings) -> str:
    """``mean [low, high]``: the mean over cases and its percentile-bootstrap 95% CI (``stats.bootstrap_ci``)."""
    arr = st.finite(values)
    if arr.size == 0:
        return "–"
    low, high = st.bootstrap_ci(arr, n_resamples=s.n_resamples, seed=s.seed)
    return f"{fmt_value(float(arr.mean()), metric)} [{fmt_value(low, metric)}, {fmt_value(high, metric)}]"


def has_values(g: GroupAnalysis, metric: str) -> bool:
    """Whether any arm has a finite value of ``metric`` (records scored before a metric existed have none)."""
    return metric in g.metrics and any(st.finite([r.get(metric) for r in g.values[a].values()]).size for a in g.arms)


def shown_metrics(g: GroupAnalysis) -> list[str]:
    """The arm table's columns: :data:`TABLE_METRICS` the records have."""
    return [m for m in TABLE_METRICS if has_values(g, m)]


def tested_metrics(g: GroupAnalysis) -> list[str]:
    """The tested metrics of the family (every metric ``analyse`` put in it but :data:`stats.NOT_TESTED`), in the
    arm table's order."""
    tested = [m for m in g.metrics if m not in st.NOT_TESTED]
    return [m for m in TABLE_METRICS if m in tested] + [m for m in tested if m not in TABLE_METRICS]


def metric_header(m: str) -> str:
    return f"{METRIC_LABELS[m]} {arrow(m)}"


def _folds_text(folds) -> str:
    return ", ".join(str(f) for f in sorted(folds, key=lambda f: (not str(f).isdigit(), int(f) if str(f).isdigit()
                                                                  else 0, str(f))))


def repo_path(path: Path, root: Path | None) -> str:
    """``path`` relative to the repository root when it lies inside it, else as it is."""
    path = Path(path).resolve()
    if root is not None and (root == path or root in path.parents):
        return str(path.relative_to(root))
    return str(path)


def suite_file(suite: dict[str, Any]) -> str:
    """The suite's file as the benchmark command names it: ``benchmarks/suites/<file>`` when it came from there."""
    src = str(suite.get("source") or "")
    m = re.search(r"(benchmarks/suites/[^/]+\.toml)$", src.replace(os.sep, "/"))
    return m.group(1) if m else (src or "SUITE.toml")


def commands(ds: DataSet, store_text: str) -> list[str]:
    """How to reproduce a data set's section: the runs, the collection into the store, the rendering."""
    sf = suite_file(ds.suite)
    work = f"WORK/{Path(sf).stem}"
    return ["Reproduce:", "",
            (f"- the runs: `nnunet-tubeconv benchmark {sf} -o {work}` (tier by tier with `--arms`, as the protocol "
            "says; an interrupted run resumes);"),
            f"- their records into the store: `{PAGE_COMMAND} collect {work} --raw $nnUNet_raw`;",
            f"- this section, from the stored records ({store_text}): `{PAGE_COMMAND} render`.", ""]


# ------------------------------------------------------------------------------------------------- costs
def arm_costs(units: list[Unit]) -> dict[str, float | None]:
    """Training s/iteration: the median over units of the record's ``telemetry.train_step_time_s_median`` (each the
    median of its timed training steps); prediction s/case: the units' ``timing.subprocess_wall_time_s -
    timing.training_time_s`` summed, over their validation cases, of the units that ran in one go (a resumed unit's
    wall time covers its last attempt only, its training time every attempt: left out; ``predict_resumed`` counts
    them); peak memory and parameters: the maximum."""
    steps, pred_s, pred_n, mem, params, resumed = [], 0.0, 0, [], [], 0
    for u in units:
        r = u.record or {}
        tel, timing = r.get("telemetry") or {}, r.get("timing") or {}
        step = tel.get("train_step_time_s_median", timing.get("train_step_time_s_median"))
        if step is not None:
            steps.append(float(step))
        wall, train = timing.get("subprocess_wall_time_s"), timing.get("training_time_s")
        cases = r.get("validation_cases") or sorted({str(x["case"]) for x in (r.get("metrics") or {}).get(
            "per_case", [])})
        if r.get("resumed"):
            resumed += 1
        elif wall is not None and train is not None and cases:
            pred_s += float(wall) - float(train)
            pred_n += len(cases)
        if r.get("peak_memory_bytes"):
            mem.append(float(r["peak_memory_bytes"]))
        if r.get("parameters"):
            params.append(float(r["parameters"]))
    return {"train_s_per_iter": float(np.median(steps)) if steps else None,
            "predict_s_per_case": pred_s / pred_n if pred_n else None,
            "peak_memory_gib": max(mem) / 2**30 if mem else None, "parameters_m": max(params) / 1e6 if params else None,
            "predict_resumed": resumed}


def _num(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def predict_cell(c: dict[str, Any]) -> str:
    text = _num(c["predict_s_per_case"], ".1f")
    if c["predict_resumed"]:
        text += f" ({c['predict_resumed']} resumed unit{'s' if c['predict_resumed'] > 1 else ''} left out)"
    return text


# ------------------------------------------------------------------------------------------------ status
def status_block(ds: DataSet) -> list[str]:
    """Per arm of the suite: units done / expected, failed, folds and seeds covered; "not run" without a record."""
    expected = [u for u in layout.expected_units(ds.suite) if u[0] == ds.dataset and u[1] == ds.configuration]
    val = [u for u in ds.units if u.split == "validation"]
    rows, n_done, n_exp = [], 0, 0
    for arm, spec in ds.suite.get("arms", {}).items():
        exp = sum(1 for u in expected if u[2] == arm)
        done = [u for u in val if u.arm == arm and u.status == "done"]
        failed = [u for u in val if u.arm == arm and u.status != "done"]
        n_done, n_exp = n_done + len(done), n_exp + exp
        trainer = spec.get("trainer", "?") if isinstance(spec, dict) else str(spec)
        if not done and not failed:
            rows.append([arm, f"`{trainer}`", f"0 / {exp}", "–", "–", "not run"])
            continue
        state = "done" if len(done) >= exp else "partial"
        if failed:
            last = (failed[0].error or "no error recorded").strip().splitlines()
            state += f"; {len(failed)} failed ({last[-1] if last else 'no error recorded'})"
        rows.append([arm, f"`{trainer}`", f"{len(done)} / {exp}", _folds_text({u.fold for u in done}) or "–",
                     ", ".join(str(x) for x in sorted({u.seed for u in done if u.seed is not None})) or "–", state])
    budget = ds.suite.get("budget_settings") or {}
    iters = (budget.get("num_epochs") or 0) * (budget.get("num_iterations_per_epoch") or 0)
    lines = [f"**Status**: {n_done} of {n_exp} units done; budget `{ds.suite.get('budget', '?')}`"
             + (f" ({iters:,} iterations: {budget['num_epochs']} epochs x {budget['num_iterations_per_epoch']})"
                if iters else "") + f"; folds {_folds_text(ds.suite.get('folds', []))} of nnU-Net's splits."
             + (" " + provenance(ds.units) if provenance(ds.units) else ""), ""]
    return lines + md_table(["arm", "trainer", "units done / expected", "folds", "seeds", "state"], rows)


def provenance(units: list[Unit]) -> str:
    recs = [u.record for u in units if u.status == "done" and u.record]
    if not recs:
        return ""
    commits = sorted({str(r["git_commit"]) for r in recs if r.get("git_commit")})
    vers = sorted({", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items()
                             if k in ("nnunet_tubeconv", "nnunetv2", "torch")) for r in recs} - {""})
    devices = sorted({str(r["device"]) for r in recs if r.get("device")})
    out = "Code: " + ("commit " + ", ".join(c[:12] for c in commits) if commits
                      else "commit not recorded in the records")
    out += (f" ({'; '.join(vers)})" if vers else "") + "."
    return out + (f" Device: {'; '.join(devices)}." if devices else "")


# ------------------------------------------------------------------------------------------- arm table
def annotator_values(res: dict[str, Any], lab: str, keys: set[tuple]) -> dict[tuple, dict[str, Any]]:
    """The annotator's rows of label ``lab``; on the cases the arms have when it shares any with them."""
    rows = {(str(r["case"]), label_key(r["label"])): r for r in res.get("per_case", [])}
    rows = {k: r for k, r in rows.items() if k[1] == lab}
    shared = {k: r for k, r in rows.items() if k in keys}
    return shared or rows


def postprocessed_values(ds: DataSet, arm: str, lab: str) -> dict[tuple, dict[str, float]]:
    """The arm's postprocessed rows of label ``lab``, averaged over its seeds per case as its raw rows are."""
    per_seed = [{(str(r["case"]), label_key(r["label"])): r for r in rows if label_key(r["label"]) == lab}
                for _, rows in sorted(ds.postprocessed.get(arm, {}).items())]
    return seed_mean(per_seed) if per_seed else {}


def arm_table(ds: DataSet, g: GroupAnalysis, s: Settings) -> list[str]:
    metrics = shown_metrics(g)
    keys = {k for a in g.arms for k in g.values[a]}
    headers = ["arm", "cases", *[metric_header(m) for m in metrics], "train s/iter", "predict s/case",
               "peak mem. (GiB)", "params (M)"]
    rows = []
    for a in g.arms:
        c = arm_costs([u for u in ds.units if u.arm == a and u.status == "done" and u.split == "validation"])
        name = a + (" (baseline, mean of its seeds)" if a == ds.baseline and len(g.seeds.get(a, [])) > 1 else "")
        rows.append([name, str(len(g.values[a]))] + [mean_ci([r.get(m) for r in g.values[a].values()], m, s)
                                                     for m in metrics]
                    + [_num(c["train_s_per_iter"], ".3f"), predict_cell(c),
                       _num(c["peak_memory_gib"], ".2f"), _num(c["parameters_m"], ".2f")])
        pp = postprocessed_values(ds, a, g.label)
        if pp:
            rows.append([f"{a} +pp", str(len(pp))] + [mean_ci([r.get(m) for r in pp.values()], m, s) for m in metrics]
                        + ["–"] * 4)
    for row, res in sorted(ds.annotators.items()):
        vals = annotator_values(res, g.label, keys)
        folder = (ds.suite.get("annotators") or {}).get(row, "")
        rows.append([f"{row} (annotator{', ' + folder if folder else ''})", str(len(vals))]
                    + [mean_ci([r.get(m) for r in vals.values()], m, s) for m in metrics] + ["–"] * 4)
    out = md_table(headers, rows)
    if any(r[0].endswith(" +pp") for r in rows):
        out += [("`+pp` rows: the arm after its tube postprocessing, chosen on its own cross-validation folds and "
                 "scored on the same cases (protocol addendum): shown, not tested, optimistic by construction."), ""]
    return out


# ---------------------------------------------------------------------------------------------- verdicts
def _cell(c: st.PairedComparison | None) -> str:
    if c is None:
        return "–"
    if not math.isfinite(c.ci_low):
        return f"{signed(c.mean_diff, c.metric)}: {verdict_text(c)}"
    verdict = f"**{c.verdict}**" if c.verdict in (st.BETTER, st.WORSE) else verdict_text(c)
    return (f"{signed(c.mean_diff, c.metric)} [{signed(c.ci_low, c.metric)}, {signed(c.ci_high, c.metric)}], "
            f"Holm p {fmt_p(c.p_holm)}: {verdict}")


def floor_text(c: st.PairedComparison | None) -> str:
    if c is None or c.noise_floor is None:
        return "not measured"
    ci = f" [{fmt_value(c.noise_floor_ci[0], c.metric)}, {fmt_value(c.noise_floor_ci[1], c.metric)}]" \
        if c.noise_floor_ci is not None else ""
    return f"{fmt_value(c.noise_floor, c.metric)}{ci}"


def family_words(f: Family, s: Settings) -> str:
    """What a family's table can and cannot say, in words (the harness's power rule and its verdicts)."""
    tested = [c for c in f.comparisons if c.tested]
    if not tested:
        return "No tested metric."
    n = max(c.n for c in tested)
    if all(c.verdict == st.WITHHELD for c in tested):
        return "Verdicts withheld: an arm lacks cases the others have (a failed or missing unit)."
    if all(c.verdict == st.TOO_FEW for c in tested):
        if n < s.min_pairs:
            return (f"Too few cases for a test: {n} pairs, fewer than the {s.min_pairs} the harness needs; every "
                    "verdict is \"too few cases to decide\", whatever the differences.")
        c0 = tested[0]
        return (f"Too few cases for a test: with n = {n} pairs and m = {c0.family_size} tests the smallest reachable "
                f"Holm-adjusted p is {c0.p_min_adjusted:.4g}, not below alpha = {s.alpha:g}.")
    decided = [c for c in tested if c.verdict in (st.BETTER, st.WORSE)]
    if not decided:
        within = sum(1 for c in tested if "noise" in c.note)
        return (f"No arm differs from {f.comparator} beyond the noise floor on any tested metric (no evidence of a "
                "difference, which is not evidence of no difference)"
                + (f"; {within} significant difference(s) lie within vanilla's seed-to-seed noise." if within else "."))
    return "; ".join(f"{c.variant} is {c.verdict} than {f.comparator} on {METRIC_LABELS[c.metric]}"
                     for c in decided) + "."


def verdict_blocks(ds: DataSet, g: GroupAnalysis, fams: list[Family], s: Settings) -> list[str]:
    if not fams:
        return [f"No paired comparison: the baseline {ds.baseline} has no finished unit here.", ""]
    if not any(f.comparisons for f in fams):
        return [f"Only {ds.baseline} has results here: nothing to compare yet.", ""]
    tested = tested_metrics(g)
    first = fams[0].comparisons
    lines = [("Each cell: mean paired difference arm − comparator over the cases both have [95% bootstrap CI], "
              "Holm-adjusted p of the paired sign-flip test (Holm over the comparator's table), verdict."), ""]
    floors = [next((c for c in first if c.metric == m), None) for m in tested]
    if any(c is not None and c.noise_floor is not None for c in floors):
        lines += [(f"Noise floor: {ds.baseline}'s seed-to-seed difference |mean(seed a − seed b)| [95% CI] on the "
                   "cases both seeds have, the same for every comparator:"), ""]
        lines += md_table(["", *[metric_header(m) for m in tested]],
                          [[f"noise floor ({ds.baseline})", *[floor_text(c) for c in floors]]])
    else:
        seeds = ", ".join(str(x) for x in g.seeds.get(ds.baseline, []))
        lines += [(f"Noise floor: not measured yet ({ds.baseline} has results of seed {seeds} only here; the floor "
                   "needs both of its seeds on the same cases), so no verdict below is checked against it yet."), ""]
    for f in fams:
        if not f.comparisons:
            continue
        trainer = (ds.suite.get("arms", {}).get(f.comparator) or {}).get("trainer", "?")
        lines += [f"**Against {f.comparator}** (`{trainer}`)", ""]
        lines += md_table(["arm", *[metric_header(m) for m in tested]],
                          [[a, *[_cell(f.get(a, m)) for m in tested]] for a in f.arms])
        lines += [family_words(f, s), ""]
    alone = [c for c in comparators(ds.suite)[1:] if c in g.values and c not in {f.comparator for f in fams}]
    if alone:
        lines += [(f"No table against {', '.join(alone)}: no arm with results is left to compare with it (vanilla "
                  "and earlier comparators are compared in the tables above)."), ""]
    missing = [c for c in comparators(ds.suite)[1:] if c not in g.values]
    if missing:
        lines += [f"No verdicts against {', '.join(missing)}: not run yet.", ""]
    return lines


# ----------------------------------------------------------------------------------------------- calibre
def calibre_block(ds: DataSet, g: GroupAnalysis, s: Settings) -> list[str]:
    present = [m for m in CALIBRE_METRICS if has_values(g, m)]
    why = st.NOT_TESTED["recall_thin"]
    if not present:
        return [("Not in these records: they were scored before the calibre recall existed (`nnunet-tubeconv "
                f"benchmark {suite_file(ds.suite)} -o WORK --reevaluate` scores the kept predictions again). "
                f"Shown, not tested: {why}."), ""]
    edges = sorted({tuple(x.get("calibre_edges")) for x in g.settings if x.get("calibre_edges")})
    keys = {k for a in g.arms for k in g.values[a]}
    rows = []
    for a in g.arms:
        cells = [mean_ci([r.get(m) for r in g.values[a].values()], m, s) for m in present]
        if all(c == "–" for c in cells):
            cells = ["not in its records (scored before the calibre recall existed; `--reevaluate` adds it)"] + [
                "–"] * (len(present) - 1)
        rows.append([a, *cells])
    for row, res in sorted(ds.annotators.items()):
        vals = annotator_values(res, g.label, keys)
        rows.append([f"{row} (annotator)", *[mean_ci([r.get(m) for r in vals.values()], m, s) for m in present]])
    edge_text = ("; band edges (reference radius, header unit): " + ", ".join(f"{a:g} / {b:g}" for a, b in edges)
                 if edges else "")
    return ([(f"Recall of the reference centreline by vessel calibre, mean [95% CI] over cases{edge_text}. Shown, "
             f"not tested: {why}."), ""] + md_table(["arm", *[metric_header(m) for m in present]], rows))


# ------------------------------------------------------------------------------------------------ snakes
def snakes_block(ds: DataSet, s: Settings) -> list[str]:
    """Per arm with snakes and per snake layer: adherence snake − straight [95% CI], saturation, same-side tilt
    (:func:`.snakes.snake_table`); "not measured yet" for an arm with records but no stored snake-stats."""
    records: dict[str, list[dict[str, Any]]] = {}
    for u in ds.units:
        if u.split == "validation" and u.record:
            records.setdefault(u.arm, []).append(u.record)
    words, rows = snake_table(ds.suite.get("arms", {}), records, ds.snake_stats, s.seed, s.n_resamples, s.min_pairs)
    return words + (md_table(SNAKE_HEADERS, rows) if rows else [])


# ----------------------------------------------------------------------------------------------- figures
def figure_block(ds: DataSet, g: GroupAnalysis, images_dir: Path, page_dir: Path) -> list[str]:
    lines = []
    others = [a for a in g.arms if a != ds.baseline]
    if ds.baseline in g.values and others:
        name = image_name(ds.dataset, "paired")
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        measured = any(c.noise_floor is not None for c in g.comparisons)
        title = (f"{ds.title}: per-case differences against {ds.baseline} (bar: mean; "
                 + ("grey band: noise floor)" if measured else "noise floor not measured yet)"))
        png = figure_differences(g, ds.baseline, tested_metrics(g), title=title)
        (images_dir / name).write_bytes(png)
        rel = os.path.relpath(images_dir / name, page_dir)
        lines += [f"![{ds.title}: per-case differences against {ds.baseline}]({rel})", "",
                  (f"*Per-case paired differences (arm − {ds.baseline}) on each tested metric, one dot per case, the "
                  f"bar at the mean; the dark band is ± {ds.baseline}'s seed-to-seed noise floor, the light one the "
                  "upper end of its 95% CI (no band: the floor is not measured yet); green/red dots: a 'better'/"
                  "'worse' verdict.*"), ""]
    case = images_dir / image_name(ds.dataset, "case")
    if case.is_file():
        from .case import CASE_RULE, ZOOM_RULE

        rel = os.path.relpath(case, page_dir)
        lines += [f"![{ds.title}: one case, each arm's errors]({rel})", "",
                  (f"*One validation case, each arm's vessel pixels found (grey), missed (orange) and false (blue), "
                   f"the zoomed window below. The case: {CASE_RULE}. The window: {ZOOM_RULE}. Drawn by `collect` "
                   "from nnU-Net's predictions.*"), ""]
    return lines


# ------------------------------------------------------------------------------------------------ sections
def postprocessing_family(ds: DataSet, g: GroupAnalysis, fams: list[Family], s: Settings) -> Family:
    """Every arm with postprocessed scores: postprocessed - raw on each tested metric over the same cases, one Holm
    family, checked against the baseline's seed-to-seed noise floor (from the baseline's family)."""
    floors = {c.metric: (c.noise_floor, c.noise_floor_ci) for c in (fams[0].comparisons if fams else [])}
    comparisons = []
    for a in g.arms:
        pp = postprocessed_values(ds, a, g.label)
        if not pp:
            continue
        for m in tested_metrics(g):
            raw = {k: r[m] for k, r in g.values[a].items() if r.get(m) is not None}
            post = {k: r[m] for k, r in pp.items() if r.get(m) is not None}
            floor, floor_ci = floors.get(m, (None, None))
            comparisons.append(st.paired_comparison(raw, post, m, f"{a} +pp", a, noise=floor, noise_ci=floor_ci,
                                                    n_resamples=s.n_resamples, seed=s.seed, min_pairs=s.min_pairs,
                                                    n_permutations=s.n_permutations))
    return Family("raw", st.finalise(comparisons, alpha=s.alpha))


def postprocessing_block(ds: DataSet, g: GroupAnalysis, fams: list[Family], s: Settings) -> list[str]:
    if not ds.suite.get("postprocessing"):
        return ["This suite does not choose a postprocessing (`postprocessing = true` turns it on).", ""]
    f = postprocessing_family(ds, g, fams, s)
    if not f.comparisons:
        return [("No arm has finished all its folds yet: no postprocessing has been chosen (the choice needs an arm's "
                 "five cross-validation folds)."), ""]
    tested = tested_metrics(g)
    lines = [("Each arm after its tube postprocessing against the same arm raw, over the same cases: mean paired "
              "difference postprocessed − raw [95% bootstrap CI], Holm p (Holm over this table), verdict, against "
              f"{ds.baseline}'s seed-to-seed noise floor. The size removed was chosen on these same cases "
              "(protocol addendum): a gain here is optimistic by construction; the chosen sizes are in the store's "
              "`postprocessing/.../scores.json`."), ""]
    lines += md_table(["arm", *[metric_header(m) for m in tested]],
                      [[a, *[_cell(f.get(a, m)) for m in tested]] for a in f.arms])
    return lines + [family_words(f, s), ""]


def dataset_section(ds: DataSet, images_dir: Path, page_dir: Path, root: Path | None, s: Settings) -> list[str]:
    lines = [f"## {ds.title} ({ds.dataset}, {ds.configuration})", ""]
    store_text = f"`{repo_path(ds.stored, root)}/`" if ds.stored else "none stored yet"
    lines += commands(ds, store_text) + status_block(ds)
    if not ds.groups:
        return lines + ["No finished unit yet: no table.", ""]
    for g, fams in zip(ds.groups, ds.families):
        if len(ds.groups) > 1:
            lines += [f"### Label {g.label}" + (f" ({g.label_name})" if g.label_name else ""), ""]
        lines += ["### Arms", "", ("Mean over the validation cases [95% bootstrap CI over cases]; costs per arm (see "
                  "[how the numbers are made](#how-the-numbers-are-made))."), ""]
        lines += arm_table(ds, g, s)
        lines += ["### Paired verdicts", ""]
        lines += verdict_blocks(ds, g, fams, s)
        lines += ["### Raw against postprocessed", ""] + postprocessing_block(ds, g, fams, s)
        lines += ["### Recall by vessel calibre", ""] + calibre_block(ds, g, s)
        if g.first_label:
            lines += ["### Do the snakes follow the vessels?", ""] + snakes_block(ds, s)
            lines += ["### Figures", ""] + figure_block(ds, g, images_dir, page_dir)
    return lines


def status_overview(datasets: list[DataSet]) -> list[str]:
    rows = []
    for ds in datasets:
        expected = [u for u in layout.expected_units(ds.suite) if u[0] == ds.dataset and u[1] == ds.configuration]
        done = [u for u in ds.units if u.status == "done" and u.split == "validation"]
        arms_done = [a for a in ds.suite.get("arms", {}) if any(u.arm == a for u in done)]
        not_run = [a for a in ds.suite.get("arms", {}) if not any(u.arm == a for u in ds.units)]
        rows.append([ds.title, str(ds.suite.get("name")), f"{len(done)} / {len(expected)}",
                     _folds_text({u.fold for u in done}) or "–", ", ".join(arms_done) or "–",
                     ", ".join(not_run) or "–"])
    return md_table(["data set", "suite", "units done / expected", "folds with results", "arms with results",
                     "not run"], rows)


def _all_decided(datasets: list[DataSet]) -> list[tuple[DataSet, Family, st.PairedComparison]]:
    return [(ds, f, c) for ds in datasets for fams in ds.families for f in fams for c in f.comparisons
            if c.tested and c.verdict in (st.BETTER, st.WORSE)]


def findings(datasets: list[DataSet], s: Settings) -> list[str]:
    """What was found, from the verdicts alone."""
    lines = []
    for ds in datasets:
        if not ds.groups:
            lines.append(f"- **{ds.title}**: not run yet.")
            continue
        decided = [(f, c) for fams in ds.families for f in fams for c in f.comparisons
                   if c.tested and c.verdict in (st.BETTER, st.WORSE)]
        tested = [c for fams in ds.families for f in fams for c in f.comparisons if c.tested]
        done_folds = {u.fold for u in ds.units if u.status == "done"}
        folds = ("s " if len(done_folds) > 1 else " ") + _folds_text(done_folds)
        n = max((c.n for c in tested), default=0)
        if decided:
            lines.append(f"- **{ds.title}** (fold{folds}): " + "; ".join(
                f"{c.variant} is {c.verdict} than {f.comparator} on {METRIC_LABELS[c.metric]} "
                f"({signed(c.mean_diff, c.metric)} [{signed(c.ci_low, c.metric)}, {signed(c.ci_high, c.metric)}])"
                for f, c in decided) + "; every other difference is within the noise or undecided.")
        elif not tested:
            lines.append(f"- **{ds.title}** (fold{folds}): only the baseline has results; nothing is compared yet.")
        elif all(c.verdict in (st.TOO_FEW, st.WITHHELD) for c in tested):
            lines.append(f"- **{ds.title}** (fold{folds}, {n} cases): too few cases to decide anything yet; the "
                         "numbers are no evidence for or against any arm.")
        else:
            lines.append(f"- **{ds.title}** (fold{folds}, {n} cases): no arm differs from vanilla, Skeleton "
                         "Recall or Wide beyond the noise floor on any tested metric.")
    if _all_decided(datasets):
        act = ("Use a trainer of this package only where a 'better' above covers your kind of data and the metric you "
               "care about, at the cost its row shows; everything else on this page is undecided or within noise.")
    else:
        act = ("No verdict yet says any arm is better or worse than vanilla nnU-Net, Skeleton Recall or Wide: choose "
               "no trainer from these numbers; this paragraph changes as folds finish.")
    return lines + ["", act, ""]


def across_block(datasets: list[DataSet], s: Settings) -> list[str]:
    groups = [g for ds in datasets for g in ds.groups]
    with_results = sorted({ds.title for ds in datasets if ds.groups})
    if len(with_results) < 2:
        return [f"Needs results on two data sets or more; so far: {', '.join(with_results) or 'none'}.", ""]
    baseline = datasets[0].baseline
    mean_rank, rows = across_datasets(groups, baseline, s.alpha, s.seed, s.n_permutations)
    metrics = list(dict.fromkeys(m for g in groups for m in g.metrics if m not in st.NOT_TESTED))
    arms = list(dict.fromkeys(a for g in groups for a in g.arms))
    lines = [("Mean rank of each arm over the data sets (1 = best on that metric), then per arm and metric a sign-flip "
             "test of the data-set-averaged mean difference against vanilla, stratified by data set, Holm over this "
             "table (`report.across_datasets`)."), ""]
    lines += md_table(["arm", *[metric_header(m) for m in metrics]],
                      [[a, *[fmt_value(mean_rank.get(a, {}).get(m)) for m in metrics]] for a in arms])
    if rows:
        lines += md_table(["arm", "metric", "data sets", "pairs", "wins", "mean of data-set mean Δ", "Holm p",
                           "verdict"],
                          [[r.variant, metric_header(r.metric), str(r.families), str(r.n_pairs),
                            f"{r.wins} of {r.families}", signed(r.statistic, r.metric), fmt_p(r.p_holm), r.verdict]
                           for r in rows])
    return lines


def method_block(s: Settings) -> list[str]:
    direction = ", ".join(f"{METRIC_LABELS[m]} {arrow(m)}" for m in TABLE_METRICS)
    return [
        (f"- **Metrics**: {direction} (↑ higher is better; Betti-2 in 3D only); HD95 in the images' header unit. "
         "Each case is validated once, by the fold that did not train on it; vanilla's value per case is the mean "
         "over its seeds. The fragment-robust Betti-0 error is shown, not tested: "
         + st.NOT_TESTED["betti0_error_filtered"] + "."),
        (f"- **Means**: mean over cases with its 95% percentile-bootstrap CI ({s.n_resamples:,} resamples of the "
        f"cases, seed {s.seed}; `stats.bootstrap_ci`)."),
        (f"- **Verdicts**: {st.TEST_NAME}, Holm over every tested arm x metric of one comparator's table, alpha = "
        f"{s.alpha:g}. {st.DIRECTION_RULE}"),
        ("- **Comparators**: vanilla (the suite's baseline), then Skeleton Recall, then Wide; each comparator's table "
        "holds the arms not already compared with it (Skeleton Recall against Wide appears once, in Skeleton "
        "Recall's table, with the sign of 'Wide − Skeleton Recall'). The noise floor is always vanilla's seed-to-seed "
        "difference: the run-to-run noise of the baseline, whatever the comparator."),
        ("- **Costs**: *train s/iter* is the median over the arm's units of each record's "
        "`telemetry.train_step_time_s_median`, the median of all the unit's timed training steps, robust to the "
        "machine's intermittent load (other jobs on the 2 cores); *predict s/case* is the units' "
        "`timing.subprocess_wall_time_s - timing.training_time_s` summed over their validation cases, so it includes "
        "nnU-Net's start-up and the validation's mirroring (a unit resumed after an interruption is left out: its "
        "wall time covers the last attempt only, its training time every attempt); *peak mem.* is the largest "
        "resident memory of the training process tree (`peak_memory_bytes`); *params* the network's parameters."),
        ("- **Annotator rows** (e.g. STARE's second human): another human's labels scored against the reference with "
        "the same evaluation, on the cases the arms have; no costs, not in the tests. **`+pp` rows** (suites with "
        "`postprocessing = true`, protocol addendum): the arm after its tube postprocessing; not in the tests."),
        ("- **Snake statistics**: `collect` runs `nnunet-tubeconv snake-stats` (its Python API, "
         "`deploy.snake_stats.snake_stats`) once per finished unit whose network has DSConv snakes (its recorded block "
         "options, else its trainer), on the fold's own model and validation cases, and stores the result beside the "
         "records; the page pools each layer's cases over the stored folds (`snake_stats.summarise`). Shown, not "
         "tested."),
        "",
    ]


def render_generated(stored: list[StoredSuite], planned: list[dict[str, Any]], images_dir: Path, page_dir: Path,
                     root: Path | None, s: Settings) -> str:
    """The text between the page's markers."""
    datasets = collect_datasets(stored, planned, s)
    lines = [f"<!-- generated by `{PAGE_COMMAND} render` from the stored records; edits here are overwritten -->",
             "", "## Status", ""]
    lines += status_overview(datasets)
    lines += ["## What was found", ""] + findings(datasets, s)
    for ds in datasets:
        lines += dataset_section(ds, images_dir, page_dir, root, s)
    lines += ["## Across data sets", ""] + across_block(datasets, s)
    lines += ["## How the numbers are made", ""] + method_block(s)
    return "\n".join(lines).rstrip() + "\n"

