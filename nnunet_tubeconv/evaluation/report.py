"""``nnunet-tubeconv report RESULTS_DIR``: the benchmark report (``report.md``, a self-contained ``report.html`` and
the machine-readable ``report.json``).

Reads a results folder as laid out by the harness (:mod:`nnunet_tubeconv.evaluation.layout`: ``suite.json`` and
``runs/<dataset>/<configuration>/<arm>/fold_<f>_seed_<s>/record.json``, plus ``test_seed_<s>`` records for held-out
test sets) and writes, into the same folder:

* ``report.md`` with PNG figures under ``figures/``;
* ``report.html``: the same content with every figure embedded as base64 PNG (no external file, script or font);
* ``report.json``: the test, the verdict rule (:data:`stats.DIRECTION_RULE`) and every comparison.

Per (data set, configuration) and per label (one test family each; labels and names from the records'
results.json, i.e. from the data set's dataset.json): a table with one row per arm (baseline first; cases present
of the cases expected) and one column per metric (mean ± sd over cases, plus the paired verdict against the baseline,
see :mod:`nnunet_tubeconv.evaluation.stats`), cost columns (parameters, iteration time, peak memory, wall time); the
power of the family (n, m, smallest reachable Holm p); the detailed paired statistics; box plots per metric;
per-case paired scatter plots (baseline vs variant); training curves from the records' ``curves``. With several data
sets, a summary across them first; held-out test sets in their own sections; then every failed unit with its error,
and the units the suite expected but that have no record.

Pooling: the validation cases of all folds form one sample per arm and seed (each case is validated in exactly one
fold); pairs are matched on (case, label); an arm's value for a pair is the mean over the seeds it ran. The cases
expected in a family are those any arm has: an arm lacking some (a failed fold) gets its verdicts withheld unless
``--complete-case``. The noise floor is the baseline's first two seeds against each other. All verdicts of one
(data set, configuration, label) are Holm-corrected together.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_tubeconv.evaluation import layout
from nnunet_tubeconv.evaluation import stats as st
from nnunet_tubeconv.evaluation.folders import FLOAT_METRICS
from nnunet_tubeconv.evaluation.metrics import HIGHER_IS_BETTER, METRICS
from nnunet_tubeconv.planning.hosts import DEFAULT_PLANS, host_label

METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95", "nsd": "NSD", "cldice": "clDice",
                 "betti0_error": "Betti-0 err", "betti1_error": "Betti-1 err", "betti2_error": "Betti-2 err",
                 "betti0_error_filtered": "Betti-0 err (filtered)", "betti1_error_filtered": "Betti-1 err (filtered)",
                 "betti2_error_filtered": "Betti-2 err (filtered)", "betti_error_patch": "patch Betti err",
                 "recall_thin": "recall thin", "recall_medium": "recall medium", "recall_thick": "recall thick"}
_FORMAT = {"dice": "{:.3f}", "iou": "{:.3f}", "nsd": "{:.3f}", "cldice": "{:.3f}", "hd95": "{:.2f}",
           "recall_thin": "{:.3f}", "recall_medium": "{:.3f}", "recall_thick": "{:.3f}"}
ARM_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]

HOW_TO_READ = (
    "One section per data set and configuration, one test family per label (labels and regions as the data set's "
    "dataset.json defines them; a case enters each label's family once). Each table row is one arm (the baseline "
    "first); each metric cell is the mean ± standard deviation over the validation cases of all folds (an arm that "
    "ran several seeds is averaged over them per case); 'cases' says how many of the expected cases the arm has. "
    "Arrows say which way is good: ↑ higher is better (Dice, IoU, NSD, clDice), ↓ lower is better (HD95, Betti "
    "errors). Under each variant's value stands the verdict of a paired comparison with the baseline on the same "
    "cases. The test is a paired sign-flip permutation test of the mean difference, the quantity the 95% bootstrap "
    "CI estimates; its p-values are Holm-corrected over every variant × metric of the family (IoU is shown but not "
    "tested: per case it is a monotone function of Dice; so are the fragment-robust Betti errors, shown beside the "
    "raw ones that are tested). \"better\" or \"worse\" only when the adjusted p is below "
    "alpha, the CI excludes zero, the rank-biserial correlation r has the same sign as the mean difference (the "
    "typical case moved the same way as the mean; otherwise \"mean and typical case disagree\"), and the difference "
    "exceeds the baseline's own seed-to-seed difference (the noise floor, shown with its 95% CI) when the baseline "
    "ran two seeds. \"too few cases to decide\": even a variant that wins on every case could not reach the adjusted "
    "p below alpha with this n and family size (the smallest reachable adjusted p is m × 2/2^n). \"withheld: cases "
    "missing\": an arm lacks cases the other has (a failed fold); the complete-case analysis is available with "
    "--complete-case. Otherwise \"no evidence of a difference\", which is not evidence of no difference."
)


# ------------------------------------------------------------------------------------------------- loading
@dataclass
class Unit:
    """One record found under RESULTS_DIR (the layout and schema: :mod:`nnunet_tubeconv.evaluation.layout`)."""

    dataset: str
    configuration: str
    arm: str
    fold: int | str | None
    seed: int | None
    path: Path
    record: dict[str, Any] | None
    status: str
    error: str | None = None
    split: str = "validation"                  # or layout.TEST_SPLIT: a held-out test set record


def load_results_dir(results_dir: str | Path) -> tuple[dict[str, Any], list[Unit]]:
    """``(suite, units)``: the suite and one :class:`Unit` per ``record.json`` (unreadable records become failed
    units whose error says why)."""
    root = Path(results_dir)
    suite_path = root / layout.SUITE_FILE
    if not suite_path.is_file():
        raise FileNotFoundError(f"{suite_path} not found: RESULTS_DIR must hold the harness's {layout.SUITE_FILE}")
    suite = json.loads(suite_path.read_text())
    units = []
    for path in sorted(root.glob(layout.RECORD_GLOB)):
        dataset, configuration, arm, unit_dir = path.parts[-5:-1]
        parsed = layout.parse_unit_dir(unit_dir)
        test_seed = layout.parse_test_dir(unit_dir)
        if parsed:
            fold, seed = parsed
        else:
            fold, seed = (layout.TEST_SPLIT, test_seed) if test_seed is not None else (unit_dir, None)
        split = layout.TEST_SPLIT if test_seed is not None else "validation"
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            units.append(Unit(dataset, configuration, arm, fold, seed, path, None, "failed",
                              f"unreadable {layout.RECORD_FILE}: {e}", split))
            continue
        if rec.get("schema") != layout.RECORD_SCHEMA:
            units.append(Unit(dataset, configuration, arm, fold, seed, path, rec, "failed",
                              f"{layout.RECORD_FILE} has schema {rec.get('schema')!r}, expected "
                              f"{layout.RECORD_SCHEMA!r}", split))
            continue
        status = rec.get("status", "failed")
        error = rec.get("error")
        if status == "done" and not (isinstance(rec.get("metrics"), dict) and rec["metrics"].get("per_case")):
            status, error = "failed", error or "status 'done' but the record has no per-case metrics"
        split = layout.TEST_SPLIT if rec.get("split") == layout.TEST_SPLIT else split
        units.append(Unit(str(rec.get("dataset", dataset)), str(rec.get("configuration", configuration)),
                          str(rec.get("arm", arm)), layout.TEST_SPLIT if split == layout.TEST_SPLIT else
                          rec.get("fold", fold), rec.get("seed", seed), path, rec,
                          "done" if status == "done" else "failed", error, split))
    return suite, units


expected_units = layout.expected_units


# ------------------------------------------------------------------------------------------------ analysis
@dataclass
class GroupAnalysis:
    """One test family: one (data set, configuration, label). Labels are tested separately: a case enters each
    label's family once, and a gain on one label cannot make a verdict on another."""

    dataset: str
    configuration: str
    label: str                                                  # label key as in results.json: "1", "(1, 2)"
    label_name: str
    arms: list[str]
    metrics: list[str]
    values: dict[str, dict[tuple, dict[str, float]]]           # arm -> (case, label) -> metric -> seed mean
    seeds: dict[str, list[int]]
    comparisons: list[st.PairedComparison]
    costs: dict[str, dict[str, Any]]
    curves: dict[str, list[tuple[str, dict[str, list]]]]        # arm -> [(unit name, curves)]
    settings: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    expected_cases: int = 0
    first_label: bool = True                                    # the first family of its (data set, configuration)
    heldout: bool = False                                       # the held-out test set, not the validation folds
    #: arm -> seed -> (case, label) -> the per-case row of that seed's run (this label only): the runs before the
    #: seed mean, e.g. the baseline's two seeds for a noise floor against another comparator
    seed_values: dict[str, dict[int, dict[tuple, dict[str, Any]]]] = field(default_factory=dict)

    def comparison(self, arm: str, metric: str) -> st.PairedComparison | None:
        return next((c for c in self.comparisons if c.variant == arm and c.metric == metric), None)


def label_key(label) -> str:
    """The key of a per-case row's label as results.json writes it: ``"1"``, or ``"(1, 2)"`` for a region."""
    return str(tuple(label)) if isinstance(label, list) else str(label)


def _label_names(records: list[dict[str, Any]]) -> dict[str, str]:
    """Label key -> name from the records' results.json ``label_names`` (written when the labels came from the
    data set's dataset.json)."""
    out: dict[str, str] = {}
    for rec in records:
        names = (rec.get("metrics") or {}).get("label_names") or {}
        for k, v in names.items():
            out.setdefault(str(k), str(v))
    return out


def seed_mean(rows_per_seed: list[dict[tuple, dict[str, Any]]]) -> dict[tuple, dict[str, float]]:
    """Per (case, label) key, each metric's mean over the seeds that have a finite value (NaN when every seed's is
    undefined; a metric no seed has, e.g. Betti-2 in 2D, is left out): an arm's value of a pair."""
    out: dict[tuple, dict[str, float]] = {}
    keys = sorted({k for rows in rows_per_seed for k in rows}, key=str)
    for k in keys:
        merged: dict[str, float] = {}
        for m in METRICS:
            vals = [rows[k].get(m) for rows in rows_per_seed if k in rows]
            if m not in FLOAT_METRICS:
                vals = [v for v in vals if v is not None]  # a null Betti-2 error means 2D: no value at all
            finite = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            if finite:
                merged[m] = float(np.mean(finite))
            elif vals:
                merged[m] = math.nan  # undefined in every seed (JSON null = NaN): the pair counts as dropped
        out[k] = merged
    return out


def analyse(suite: dict[str, Any], units: list[Unit], n_resamples: int = st.N_RESAMPLES, seed: int = 0,
            alpha: float = st.ALPHA, min_pairs: int = st.MIN_PAIRS, complete_case: bool = False,
            n_permutations: int = st.N_PERMUTATIONS, split: str = "validation") -> list[GroupAnalysis]:
    """One :class:`GroupAnalysis` (test family) per (data set, configuration, label) with a completed unit.

    The cases expected in a family are those any arm has (each case is validated in exactly one fold, so an arm
    whose fold failed lacks that fold's cases); comparisons where an arm lacks some are withheld unless
    ``complete_case``.
    """
    baseline = str(suite.get("baseline"))
    suite_arms = [str(a) for a in suite.get("arms", {})]
    groups: dict[tuple[str, str], list[Unit]] = {}
    for u in units:
        if u.status == "done" and u.split == split:
            groups.setdefault((u.dataset, u.configuration), []).append(u)
    out = []
    for (ds, cfg), group_units in sorted(groups.items()):
        arms_present = {u.arm for u in group_units}
        arms = [a for a in [baseline, *suite_arms] if a in arms_present]
        arms = list(dict.fromkeys(arms + sorted(arms_present - set(arms))))
        per_seed: dict[str, dict[int, dict[tuple, dict[str, Any]]]] = {a: {} for a in arms}
        notes: list[str] = []
        settings: list[dict[str, Any]] = []
        curves: dict[str, list] = {a: [] for a in arms}
        label_order: list[str] = []
        for u in sorted(group_units, key=lambda u: (u.arm, u.seed or 0, str(u.fold))):
            rows = per_seed[u.arm].setdefault(int(u.seed or 0), {})
            metrics = u.record["metrics"]
            if metrics.get("settings") and metrics["settings"] not in settings:
                settings.append(metrics["settings"])
            for r in metrics["per_case"]:
                key = (str(r["case"]), label_key(r["label"]))
                if key[1] not in label_order:
                    label_order.append(key[1])
                if key in rows:
                    notes.append(f"{u.arm} seed {u.seed}: case {key[0]} label {key[1]} appears in more than one fold; "
                                 f"the later fold's value is used")
                rows[key] = r
            if u.record.get("curves"):
                curves[u.arm].append((f"fold {u.fold}, seed {u.seed}", u.record["curves"]))
        names = _label_names([u.record for u in group_units])
        all_values = {a: seed_mean([per_seed[a][s] for s in sorted(per_seed[a])]) for a in arms}
        base_seeds = sorted(per_seed.get(baseline, {}))
        if len(settings) > 1:
            notes.append("the units were evaluated with different metric settings (see Settings)")
        costs = _costs(group_units, arms)
        for li, lab in enumerate(label_order):
            values = {a: {k: r for k, r in all_values[a].items() if k[1] == lab} for a in arms}
            expected = {k for a in arms for k in values[a]}
            metrics_present = [m for m in METRICS
                               if any(m in row and row[m] is not None for a in arms for row in values[a].values())]
            lab_notes = list(notes)
            if baseline in values:
                repeats = [{k: r for k, r in per_seed[baseline][s].items() if k[1] == lab}
                           for s in base_seeds[:2]] if len(base_seeds) >= 2 else []
                comparisons = st.compare_arms(values, baseline, metrics_present, repeats, alpha, n_resamples, seed,
                                              min_pairs, expected=expected, complete_case=complete_case,
                                              n_permutations=n_permutations)
                if not repeats:
                    lab_notes.append("the baseline ran with one seed: no noise floor was measured, so a verdict cannot "
                                     "be checked against the seed-to-seed noise")
            else:
                comparisons = []
                lab_notes.append(f"the baseline arm {baseline!r} has no completed unit here: no paired comparison")
            for a in arms:
                lacking = st.missing_keys(expected, values[a])
                if lacking:
                    lab_notes.append(f"{a} lacks {len(lacking)} of {len(expected)} cases (a failed or missing unit)"
                                     + ("; complete-case analysis: verdicts use the cases both arms have"
                                        if complete_case else "; its verdicts are withheld (report --complete-case "
                                                              "gives the complete-case analysis)"))
            seed_values = {a: {s: {k: r for k, r in rows.items() if k[1] == lab}
                               for s, rows in sorted(per_seed[a].items())} for a in arms}
            out.append(GroupAnalysis(ds, cfg, lab, names.get(lab, ""), arms, metrics_present, values,
                                     {a: sorted(per_seed[a]) for a in arms}, comparisons, costs, curves, settings,
                                     lab_notes, len(expected), li == 0, split == layout.TEST_SPLIT, seed_values))
    return out


def _costs(units: list[Unit], arms: list[str]) -> dict[str, dict[str, Any]]:
    def vals(recs: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in recs if r.get(key) is not None]

    out = {}
    for a in arms:
        recs = [u.record for u in units if u.arm == a]
        params, it = vals(recs, "parameters"), vals(recs, "iteration_time_s")
        mem, wall = vals(recs, "peak_memory_bytes"), vals(recs, "wall_time_s")
        out[a] = {"parameters": max(params) if params else None,
                  "iteration_time_s": float(np.mean(it)) if it else None,
                  "peak_memory_bytes": max(mem) if mem else None,
                  "wall_time_s": float(np.sum(wall)) if wall else None, "units": len(recs)}
    return out


# ------------------------------------------------------------------------------------- across data sets
@dataclass
class AcrossRow:
    variant: str
    metric: str
    families: int
    wins: int                      # families where the variant's mean is better than the baseline's
    statistic: float               # mean over families of the mean paired difference (variant - baseline)
    p_value: float
    n_pairs: int = 0
    p_holm: float = math.nan
    p_min_adjusted: float = math.nan
    verdict: str = st.NO_EVIDENCE


def across_datasets(groups: list[GroupAnalysis], baseline: str, alpha: float = st.ALPHA, seed: int = 0,
                    n_permutations: int = st.N_PERMUTATIONS) -> tuple[dict[str, dict[str, float]], list[AcrossRow]]:
    """Summary over every family (data set, configuration, label) when there are several data sets.

    Mean rank: per family, the arms are ranked on each tested metric by their mean over cases (1 = best, ties share
    the mean rank), then the ranks are averaged over the families that have the metric. Test: per variant and metric,
    a sign-flip test stratified by family (:func:`stats.stratified_sign_flip_p`) on the complete pairs of each
    family, Holm over every variant × metric of this summary; "better"/"worse" when the adjusted p is below alpha,
    else "no evidence of a difference".
    """
    from scipy.stats import rankdata

    ranks: dict[str, dict[str, list[float]]] = {}
    for g in groups:
        for m in g.metrics:
            if m in st.NOT_TESTED:
                continue
            means = [st.describe([r.get(m) for r in g.values[a].values()])["mean"] for a in g.arms]
            ok = [(a, v) for a, v in zip(g.arms, means) if math.isfinite(v)]
            if len(ok) < 2:
                continue
            signed = [-v if HIGHER_IS_BETTER[m] else v for _, v in ok]
            for (a, _), r in zip(ok, rankdata(signed)):
                ranks.setdefault(a, {}).setdefault(m, []).append(float(r))
    mean_rank = {a: {m: float(np.mean(v)) for m, v in per.items()} for a, per in ranks.items()}
    rows: list[AcrossRow] = []
    variants = list(dict.fromkeys(a for g in groups for a in g.arms if a != baseline))
    metrics = list(dict.fromkeys(m for g in groups for m in g.metrics if m not in st.NOT_TESTED))
    for a in variants:
        for m in metrics:
            diffs, wins = [], 0
            for g in groups:
                if baseline not in g.values or a not in g.values:
                    continue
                b, v, _, _ = st.pair_up({k: r.get(m) for k, r in g.values[baseline].items()},
                                        {k: r.get(m) for k, r in g.values[a].items()})
                if b.size:
                    diffs.append(v - b)
                    gain = float(np.mean(v - b)) * (1 if HIGHER_IS_BETTER[m] else -1)
                    wins += gain > 0
            if len(diffs) < 2:
                continue
            stat, p = st.stratified_sign_flip_p(diffs, n_permutations, seed)
            rows.append(AcrossRow(a, m, len(diffs), wins, stat, p, int(sum(d.size for d in diffs))))
    for row, p in zip(rows, st.holm([r.p_value for r in rows])):
        row.p_holm = p
        row.p_min_adjusted = min(1.0, len(rows) * st.smallest_p(row.n_pairs, n_permutations))
        if not row.p_min_adjusted < alpha:
            row.verdict = st.TOO_FEW
        elif math.isfinite(p) and p < alpha and row.statistic != 0:
            favourable = (row.statistic > 0) == HIGHER_IS_BETTER[row.metric]
            row.verdict = st.BETTER if favourable else st.WORSE
    return mean_rank, rows


def _across_blocks(groups: list[GroupAnalysis], baseline: str, alpha: float, seed: int) -> list[Block]:
    if len({g.dataset for g in groups}) < 2:
        return []
    mean_rank, rows = across_datasets(groups, baseline, alpha, seed)
    metrics = list(dict.fromkeys(m for g in groups for m in g.metrics if m not in st.NOT_TESTED))
    arms = list(dict.fromkeys(a for g in groups for a in g.arms))
    fams = len(groups)
    blocks = [Block("h", "Across data sets", 2), Block("p", (
        f"Mean rank of each arm over the {fams} families (data set × configuration × label; 1 = best on that metric, "
        "ties share the mean rank), then, per variant and metric, a sign-flip test of the data-set-averaged mean "
        "difference stratified by family (each case's sign flips within its family; every family weighs the same), "
        "on the complete pairs of each family, Holm-corrected over this table. 'wins' counts the families whose mean "
        "moved the good way."))]
    blocks.append(Block("table", headers=["arm"] + [f"{METRIC_LABELS[m]} {arrow(m)} (mean rank)" for m in metrics],
                        rows=[[Cell(a)] + [Cell(fmt_value(mean_rank.get(a, {}).get(m))) for m in metrics]
                              for a in arms]))
    if rows:
        blocks.append(Block("table", headers=["variant", "metric", "families", "pairs", "wins",
                                              "mean of family mean Δ", "stratified sign-flip p", "Holm p",
                                              "smallest reachable Holm p", "verdict"],
                            rows=[[Cell(r.variant), Cell(f"{METRIC_LABELS[r.metric]} {arrow(r.metric)}"),
                                   Cell(str(r.families)), Cell(str(r.n_pairs)), Cell(f"{r.wins} of {r.families}"),
                                   Cell(fmt_value(r.statistic, r.metric)), Cell(fmt_p(r.p_value)),
                                   Cell(fmt_p(r.p_holm)),
                                   Cell(fmt_p(r.p_min_adjusted)),
                                   Cell("", r.verdict, _VERDICT_CLASS[r.verdict])] for r in rows]))
    return blocks


# ------------------------------------------------------------------------------------------------- figures
def _figure(ncols: int, nrows: int = 1, w: float = 3.2, h: float = 2.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return cols, math.ceil(n / cols)


def arrow(metric: str) -> str:
    """``↑`` when higher is better on ``metric``, else ``↓``."""
    return "↑" if HIGHER_IS_BETTER[metric] else "↓"


def figure_boxplots(g: GroupAnalysis) -> bytes:
    cols, rows = _grid(len(g.metrics))
    fig, axes = _figure(cols, rows, w=2.2 + 0.45 * len(g.arms))
    rng = np.random.default_rng(0)
    for i, ax in enumerate(axes.flat):
        if i >= len(g.metrics):
            ax.set_visible(False)
            continue
        m = g.metrics[i]
        data = [st.finite([r.get(m) for r in g.values[a].values()]) for a in g.arms]
        ax.boxplot(data, showfliers=False, widths=0.6, medianprops={"color": "black"})
        for j, d in enumerate(data):
            ax.scatter(j + 1 + rng.uniform(-0.15, 0.15, d.size), d, s=9, alpha=0.6,
                       color=ARM_COLOURS[j % len(ARM_COLOURS)], zorder=3)
        ax.set_xticks(range(1, len(g.arms) + 1), g.arms, rotation=20, fontsize=8)
        ax.set_title(f"{METRIC_LABELS[m]} {arrow(m)}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{g.dataset} / {g.configuration}: per-case values by arm", fontsize=11)
    return _png(fig)


def figure_paired(g: GroupAnalysis, variant: str, baseline: str) -> bytes:
    cols, rows = _grid(len(g.metrics))
    fig, axes = _figure(cols, rows, w=2.9, h=2.9)
    for i, ax in enumerate(axes.flat):
        if i >= len(g.metrics):
            ax.set_visible(False)
            continue
        m = g.metrics[i]
        b, v, _, _ = st.pair_up({k: r.get(m) for k, r in g.values[baseline].items()},
                                {k: r.get(m) for k, r in g.values[variant].items()})
        c = g.comparison(variant, m)
        colour = {st.BETTER: "#2E7D32", st.WORSE: "#C62828"}.get(c.verdict if c else "", "#555555")
        ax.scatter(b, v, s=14, alpha=0.75, color=colour, edgecolors="none")
        if b.size:
            lo, hi = float(min(b.min(), v.min())), float(max(b.max(), v.max()))
            pad = 0.05 * (hi - lo) if hi > lo else 0.5
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#999999", lw=1, ls="--")
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel(baseline, fontsize=8)
        ax.set_ylabel(variant, fontsize=8)
        ax.set_title(f"{METRIC_LABELS[m]} {arrow(m)}\n{c.verdict if c else 'not compared'}", fontsize=9,
                     color=colour)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{g.dataset} / {g.configuration}: {variant} vs {baseline}, one dot per (case, label); "
                 "above the diagonal = variant higher", fontsize=10)
    return _png(fig)


def figure_differences(g: GroupAnalysis, baseline: str, metrics: list[str] | None = None,
                       arms: list[str] | None = None, title: str | None = None) -> bytes:
    """Per-case paired differences ``arm - baseline``, one column per metric (default: the tested metrics of the
    family), the arms along the x axis, one dot per (case, label) and a bar at the mean; the baseline's seed-to-seed
    noise floor of each metric (``±`` floor, from the family's comparisons) drawn as a grey band around 0, its 95% CI's
    upper end as a lighter band. Dots are green/red where the arm's verdict is better/worse, grey otherwise."""
    metrics = [m for m in (metrics or g.metrics) if m not in st.NOT_TESTED]
    arms = [a for a in (arms or g.arms) if a != baseline and a in g.values]
    fig, axes = _figure(max(len(metrics), 1), 1, w=1.2 + 0.55 * max(len(arms), 1), h=3.4)
    rng = np.random.default_rng(0)
    for ax, m in zip(axes.flat, metrics):
        floors = [c for c in (g.comparison(a, m) for a in arms) if c is not None and c.noise_floor is not None]
        if floors:
            c0 = floors[0]
            if c0.noise_floor_ci is not None:
                ax.axhspan(-c0.noise_floor_ci[1], c0.noise_floor_ci[1], color="#DDDDDD", alpha=0.5, lw=0,
                           label="noise floor, 95% CI upper end")
            ax.axhspan(-c0.noise_floor, c0.noise_floor, color="#AAAAAA", alpha=0.6, lw=0, label="noise floor")
        ax.axhline(0, color="#555555", lw=0.8)
        for j, a in enumerate(arms):
            b, v, _, _ = st.pair_up({k: r.get(m) for k, r in g.values[baseline].items()},
                                    {k: r.get(m) for k, r in g.values[a].items()})
            c = g.comparison(a, m)
            colour = {st.BETTER: "#2E7D32", st.WORSE: "#C62828"}.get(c.verdict if c else "", "#4C72B0")
            d = v - b
            ax.scatter(j + rng.uniform(-0.12, 0.12, d.size), d, s=14, alpha=0.8, color=colour, edgecolors="none",
                       zorder=3)
            if d.size:
                ax.plot([j - 0.25, j + 0.25], [d.mean()] * 2, color="black", lw=1.6, zorder=4)
        ax.set_xticks(range(len(arms)), arms, rotation=35, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.set_title(f"{METRIC_LABELS[m]} {arrow(m)}", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.supylabel(f"arm − {baseline}, per case", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=len(handles))
    fig.suptitle(title or f"{g.dataset} / {g.configuration}: per-case differences against {baseline} (bar: mean)",
                 fontsize=11)
    return _png(fig)


def figure_curves(g: GroupAnalysis) -> bytes | None:
    if not any(g.curves[a] for a in g.arms):
        return None
    fig, axes = _figure(2, 1, w=5.0, h=3.2)
    ax_loss, ax_dice = axes[0]
    for j, a in enumerate(g.arms):
        colour = ARM_COLOURS[j % len(ARM_COLOURS)]
        for k, (_, c) in enumerate(g.curves[a]):
            ep = c.get("epoch") or list(range(len(c.get("train_loss") or c.get("pseudo_dice") or [])))
            label = a if k == 0 else None
            if c.get("train_loss"):
                ax_loss.plot(ep[:len(c["train_loss"])], c["train_loss"], color=colour, lw=1, alpha=0.8, label=label)
            if c.get("val_loss"):
                ax_loss.plot(ep[:len(c["val_loss"])], c["val_loss"], color=colour, lw=1, alpha=0.8, ls="--")
            if c.get("pseudo_dice"):
                ax_dice.plot(ep[:len(c["pseudo_dice"])], c["pseudo_dice"], color=colour, lw=1, alpha=0.8,
                             label=label)
    ax_loss.set_title("loss (solid: train, dashed: validation)", fontsize=10)
    ax_dice.set_title("nnU-Net pseudo Dice (validation)", fontsize=10)
    for ax in (ax_loss, ax_dice):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{g.dataset} / {g.configuration}: training curves, one line per fold and seed", fontsize=11)
    return _png(fig)


# -------------------------------------------------------------------------------------------- document model
@dataclass
class Cell:
    text: str
    sub: str = ""           # second line (the verdict)
    cls: str = ""           # css class of the second line / whole cell


@dataclass
class Block:
    kind: str               # "h", "p", "table", "img", "list", "pre", "details"
    text: str = ""
    level: int = 2
    headers: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    png: bytes = b""
    filename: str = ""


_VERDICT_CLASS = {st.BETTER: "better", st.WORSE: "worse", st.NO_EVIDENCE: "none", st.TOO_FEW: "few",
                  st.MIXED: "few", st.WITHHELD: "few", st.NOT_TESTED_VERDICT: "none"}


def verdict_text(c: st.PairedComparison) -> str:
    """The verdict as a table cell shows it: "too few cases to decide" carries its numbers."""
    if c.verdict == st.TOO_FEW:
        if math.isfinite(c.p_value):
            return f"{c.verdict} (n={c.n}, smallest reachable adjusted p={c.p_min_adjusted:.4g})"
        return f"{c.verdict} (n={c.n})"
    return c.verdict


def fmt_value(v, metric: str | None = None) -> str:
    """A metric value as the tables show it (``–`` for None or NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return _FORMAT.get(metric or "", "{:.2f}").format(v)


def fmt_p(p: float) -> str:
    """A p-value as the tables show it (``<0.0001`` below that, ``–`` for NaN)."""
    if not math.isfinite(p):
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")


def _gib(v) -> str:
    return "–" if v is None else f"{v / 2**30:.2f}"


def arm_labels(suite: dict[str, Any]) -> dict[str, str]:
    """Each arm's name as the tables show it: with its host (``dsconv [ResEnc M]``) when the arm is not on
    nnU-Net's default plans and its name does not already say which plans (``TRAINER@PLANS``)."""
    out = {}
    for a, spec in suite.get("arms", {}).items():
        plans = spec.get("plans", DEFAULT_PLANS) if isinstance(spec, dict) else DEFAULT_PLANS
        named = str(a).endswith(f"{layout.PLANS_SEPARATOR}{plans}")
        out[str(a)] = str(a) if plans == DEFAULT_PLANS or named else f"{a} [{host_label(plans)}]"
    return out


def _host_note(suite: dict[str, Any], baseline: str) -> str:
    arms = {str(a): s for a, s in suite.get("arms", {}).items() if isinstance(s, dict)}
    base = arms.get(baseline, {}).get("plans", DEFAULT_PLANS)
    other = [a for a, s in arms.items() if s.get("plans", DEFAULT_PLANS) != base]
    if not other:
        return ""
    return (f" Arms on other plans than the baseline's ({host_label(base)}): {', '.join(other)}; their comparisons "
            "with the baseline measure the network and the host together.")


def build_document(suite: dict[str, Any], units: list[Unit], groups: list[GroupAnalysis], n_resamples: int,
                   seed: int, alpha: float, min_pairs: int,
                   heldout: list[GroupAnalysis] | None = None) -> tuple[str, list[Block]]:
    title = f"Benchmark report: {suite.get('name', 'unnamed suite')}"
    baseline = str(suite.get("baseline"))
    done = [u for u in units if u.status == "done"]
    failed = [u for u in units if u.status != "done"]
    found = {(u.dataset, u.configuration, u.arm, str(u.fold), str(u.seed))
             for u in units if u.split != layout.TEST_SPLIT}
    missing = sorted(expected_units(suite) - found)
    arms = "; ".join(f"{a} ({s.get('trainer', '?')}, {s.get('plans', '?')})" if isinstance(s, dict) else a
                     for a, s in suite.get("arms", {}).items())
    blocks = [Block("p", text=(f"Baseline arm: {baseline}. Arms: {arms}. Budget: {suite.get('budget', '?')}. "
                               f"Units: {len(done)} done, {len(failed)} failed, {len(missing)} without a record"
                               + (" (listed with their errors at the end)." if failed or missing else ".")
                               + _host_note(suite, baseline)))]
    settings_items = [(f"Statistics: paired by (case, label), one family per (data set, configuration, label); "
                       f"{st.TEST_NAME}, exact up to {st.EXACT_MAX_N} pairs, else {st.N_PERMUTATIONS} seeded "
                       f"random sign patterns; Holm over every tested variant × metric of a family, alpha = {alpha}; "
                       f"percentile bootstrap of the mean difference, {n_resamples} resamples, seed {seed}; at "
                       f"least {min_pairs} complete pairs per test; Wilcoxon signed-rank p and rank-biserial r shown "
                       "beside."),
                      f"Verdict rule: {st.DIRECTION_RULE}"]
    for g in groups:
        for s in g.settings:
            settings_items.append(f"Metrics of {g.dataset} / {g.configuration}: " + _describe_settings(s))
    blocks += [Block("h", "How to read this", 2), Block("p", HOW_TO_READ), Block("h", "Settings", 2),
               Block("list", items=settings_items)]
    if not groups:
        blocks.append(Block("p", "No unit completed with metrics: nothing to compare."))
    blocks.extend(_across_blocks(groups, baseline, alpha, seed))
    for g in groups:
        blocks.extend(_group_blocks(g, baseline, alpha, arm_labels(suite)))
    for g in heldout or []:
        blocks.extend(_group_blocks(g, baseline, alpha, arm_labels(suite)))
    blocks.append(Block("h", f"Failed units ({len(failed)})", 2))
    if failed:
        blocks.append(Block("table", headers=["data set", "configuration", "arm", "fold", "seed", "error"],
                            rows=[[Cell(u.dataset), Cell(u.configuration), Cell(u.arm), Cell(str(u.fold)),
                                   Cell(str(u.seed)), Cell((u.error or "no error recorded").strip().splitlines()[-1]
                                                           if (u.error or "").strip() else "no error recorded",
                                                           cls="error")]
                                  for u in failed]))
        for u in failed:
            if u.error and len(u.error.strip().splitlines()) > 1:
                blocks.append(Block("details", text=u.error.strip(),
                                    items=[f"{u.dataset} / {u.configuration} / {u.arm} / fold {u.fold} seed {u.seed}"]))
    else:
        blocks.append(Block("p", "None."))
    if missing:
        blocks += [Block("h", f"Units without a record ({len(missing)})", 2),
                   Block("list", items=[f"{d} / {c} / {a} / fold {f} seed {s}" for d, c, a, f, s in missing])]
    versions = sorted({json.dumps(u.record.get("versions"), sort_keys=True) for u in done
                       if u.record and u.record.get("versions")})
    commits = sorted({str(u.record.get("git_commit")) for u in done if u.record and u.record.get("git_commit")})
    if versions or commits:
        blocks += [Block("h", "Provenance", 2),
                   Block("list", items=[f"versions: {v}" for v in versions] + [f"git commit: {c}" for c in commits])]
    return title, blocks


def _describe_settings(s: dict[str, Any]) -> str:
    conn = s.get("connectivity", {})
    desc = (f"NSD tolerance {s.get('nsd_tolerance_mm')} (header unit, usually mm), HD percentile "
            f"{s.get('hd_percentile')}, connectivity {conn.get('mode', '?') if isinstance(conn, dict) else conn}")
    if isinstance(conn, dict) and "2d" in conn and "3d" in conn:
        desc += (f" (foreground/background: 2D {conn['2d']['foreground']}/{conn['2d']['background']}, "
                 f"3D {conn['3d']['foreground']}/{conn['3d']['background']})")
    return desc + f", distances by {s.get('distance_method', '?')}, files read with {s.get('reader', '?')}."


def _group_blocks(g: GroupAnalysis, baseline: str, alpha: float, labels: dict[str, str] | None = None) -> list[Block]:
    labels = labels or {}
    title = (f"Held-out test set: {g.dataset} — {g.configuration}" if g.heldout
             else f"{g.dataset} — {g.configuration}")
    blocks = [Block("h", title, 2)] if g.first_label else []
    if g.heldout and g.first_label:
        blocks.append(Block("p", "Test cases (imagesTs/labelsTs) predicted by each arm with nnU-Net's predictor, the "
                                 "arm's trained folds as an ensemble, one prediction per seed. Reported beside the "
                                 "cross-validation results; nothing (arms, options, budgets) was chosen on them."))
    label = f"Label {g.label}" + (f" ({g.label_name})" if g.label_name else "")
    blocks.append(Block("h", label, 3))
    n_cases = {a: len(g.values[a]) for a in g.arms}
    headers = ["arm", "seeds", "cases"] + [f"{METRIC_LABELS[m]} {arrow(m)}" for m in g.metrics] + [
        "params (M)", "iter. time (s)", "peak mem. (GiB)", "wall time (h, all units)"]
    rows = []
    for a in g.arms:
        lacking = g.expected_cases - n_cases[a]
        row = [Cell(labels.get(a, a) + (" (baseline)" if a == baseline and a != "baseline" else "")),
               Cell(", ".join(map(str, g.seeds[a]))),
               Cell(f"{n_cases[a]} of {g.expected_cases}", f"lacks {lacking}" if lacking else "",
                    "few" if lacking else "")]
        for m in g.metrics:
            d = st.describe([r.get(m) for r in g.values[a].values()])
            text = f"{fmt_value(d['mean'], m)} ± {fmt_value(d['sd'], m)}"
            c = g.comparison(a, m)
            if a == baseline:
                row.append(Cell(text))
            elif c is None:
                row.append(Cell(text, "not compared", "few"))
            else:
                row.append(Cell(text, verdict_text(c), _VERDICT_CLASS[c.verdict]))
        cost = g.costs[a]
        row += [Cell("–" if cost["parameters"] is None else f"{cost['parameters'] / 1e6:.2f}"),
                Cell(fmt_value(cost["iteration_time_s"])), Cell(_gib(cost["peak_memory_bytes"])),
                Cell("–" if cost["wall_time_s"] is None else f"{cost['wall_time_s'] / 3600:.2f}")]
        rows.append(row)
    blocks.append(Block("table", headers=headers, rows=rows))
    tested = [c for c in g.comparisons if c.tested]
    if tested:
        c0 = tested[0]
        blocks.append(Block("p", (
            f"Power: this table's family holds m = {c0.family_size} tests (every variant × metric except "
            f"{', '.join(METRIC_LABELS[k] for k in st.NOT_TESTED)}); with n = {c0.n} pairs the smallest p the test can "
            f"give is 2/2^n = {c0.p_min:.4g}, so the smallest reachable Holm-adjusted p is {c0.p_min_adjusted:.4g} "
            + (f"(below alpha = {alpha:g}: a verdict is possible)." if c0.p_min_adjusted < alpha else
               f"(not below alpha = {alpha:g}: too few cases to decide, whatever the data).")))) 
    blocks.append(Block("p", "Costs: parameters and peak memory are maxima over units, iteration time is the mean over "
                             "units, wall time the sum over this arm's completed units."))
    for note in dict.fromkeys(g.notes):
        blocks.append(Block("p", f"Note: {note}."))
    if g.comparisons:
        blocks.append(Block("h", "Paired comparisons with the baseline", 4))
        drows = []
        for c in g.comparisons:
            ci = ("–" if not math.isfinite(c.ci_low)
                  else f"[{fmt_value(c.ci_low, c.metric)}, {fmt_value(c.ci_high, c.metric)}]")
            floor = "–" if c.noise_floor is None else fmt_value(c.noise_floor, c.metric)
            if c.noise_floor_ci is not None:
                floor += f" [{fmt_value(c.noise_floor_ci[0], c.metric)}, {fmt_value(c.noise_floor_ci[1], c.metric)}]"
            elif c.noise_floor is None:
                floor = "not measured (one seed)"
            drows.append([Cell(labels.get(c.variant, c.variant)), Cell(f"{METRIC_LABELS[c.metric]} {arrow(c.metric)}"),
                          Cell(f"{c.n} of {c.n_expected}" + (f" ({c.n_dropped} dropped)" if c.n_dropped else "")),
                          Cell(fmt_value(c.baseline_stats.get("median"), c.metric)),
                          Cell(fmt_value(c.variant_stats.get("median"), c.metric)),
                          Cell(fmt_value(c.mean_diff, c.metric)), Cell(ci), Cell(fmt_p(c.p_value)),
                          Cell(fmt_p(c.p_holm)),
                          Cell("–" if not c.tested else fmt_p(c.p_min_adjusted)), Cell(fmt_p(c.wilcoxon_p)),
                          Cell("–" if not math.isfinite(c.rank_biserial) else f"{c.rank_biserial:+.2f}"),
                          Cell(floor), Cell("", verdict_text(c), _VERDICT_CLASS[c.verdict]), Cell(c.note)])
        blocks.append(Block("table", headers=["variant", "metric", "pairs (of expected)", "median (baseline)",
                                              "median (variant)", "mean Δ (variant − baseline)", "95% CI of Δ",
                                              "sign-flip p", "Holm p", "smallest reachable Holm p", "Wilcoxon p",
                                              "r", "noise floor [95% CI]", "verdict", "note"], rows=drows))
    blocks.append(Block("h", "Figures", 4))
    tag = (["test"] if g.heldout else []) + [g.dataset, g.configuration] + (
        [] if g.first_label else [f"label{g.label}"])
    blocks.append(Block("img", text="Per-case values by arm (boxes: quartiles; dots: cases).",
                        png=figure_boxplots(g), filename=_slug("box", *tag) + ".png"))
    if baseline in g.arms:
        for a in g.arms:
            if a != baseline:
                blocks.append(Block("img", text=f"Per-case pairs, {a} against {baseline}.",
                                    png=figure_paired(g, a, baseline),
                                    filename=_slug("paired", *tag, a) + ".png"))
    if g.first_label and not g.heldout:
        curves = figure_curves(g)
        if curves is not None:
            blocks.append(Block("img", text="Training curves from nnU-Net's logs.", png=curves,
                                filename=_slug("curves", g.dataset, g.configuration) + ".png"))
        else:
            blocks.append(Block("p", "No training curves were recorded."))
    return blocks


# -------------------------------------------------------------------------------------------------- render
def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h":
            out += ["#" * b.level + " " + b.text, ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "list":
            out += [f"- {i}" for i in b.items] + [""]
        elif b.kind == "details":
            out += [f"Error of {b.items[0]}:", "", "```", b.text, "```", ""]
        elif b.kind == "table":
            out.append("| " + " | ".join(_md_escape(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            for row in b.rows:
                cells = []
                for c in row:
                    t = c.text if not c.sub else (f"{c.text} ({c.sub})" if c.text else c.sub)
                    cells.append(_md_escape(t))
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        elif b.kind == "img":
            out += [f"![{b.text}](figures/{b.filename})", "", f"*{b.text}*", ""]
    return "\n".join(out)


CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --alt:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg); background: var(--bg);
       max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; border-bottom: 1px solid var(--line); padding-bottom: 8px; }
h2 { font-size: 21px; margin-top: 40px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
h3 { font-size: 17px; margin-top: 28px; }
p, li { max-width: 980px; }
.howto { background: #f0f6ff; border-left: 4px solid var(--accent); padding: 10px 16px; border-radius: 4px; }
.tablewrap { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 5px 9px; text-align: right; vertical-align: top; white-space: nowrap; }
th { background: var(--alt); text-align: center; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.error, td.note { white-space: normal; text-align: left; max-width: 520px; color: var(--muted); }
.verdict { display: inline-block; margin-top: 2px; padding: 0 6px; border-radius: 9px; font-size: 11px;
           white-space: normal; line-height: 1.3; }
td.metric { min-width: 96px; white-space: normal; }
.verdict.better { background: #dafbe1; color: #116329; font-weight: 600; }
.verdict.worse { background: #ffebe9; color: #a40e26; font-weight: 600; }
.verdict.none { background: #eff2f5; color: var(--muted); }
.verdict.few { background: #fff8c5; color: #7d4e00; }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; }
details { margin: 6px 0; } pre { background: var(--alt); padding: 10px; overflow-x: auto; font-size: 12px; }
"""


def render_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    after_howto = False
    for b in blocks:
        if b.kind == "h":
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
            after_howto = b.text == "How to read this"
        elif b.kind == "p":
            cls = ' class="howto"' if after_howto else ""
            out.append(f"<p{cls}>{e(b.text)}</p>")
            after_howto = False
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "details":
            out.append(f"<details><summary>Error of {e(b.items[0])}</summary><pre>{e(b.text)}</pre></details>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
            body = []
            for row in b.rows:
                tds = []
                for c in row:
                    inner = e(c.text)
                    if c.sub:
                        inner += ("<br>" if c.text else "") + f'<span class="verdict {e(c.cls)}">{e(c.sub)}</span>'
                        tds.append(f'<td class="metric">{inner}</td>')
                    else:
                        cls = f' class="{e(c.cls)}"' if c.cls else (' class="note"' if len(c.text) > 40 else "")
                        tds.append(f"<td{cls}>{inner}</td>")
                body.append("<tr>" + "".join(tds) + "</tr>")
            out.append(f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}'
                       "</tbody></table></div>")
        elif b.kind == "img":
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img alt="{e(b.text)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


REPORT_SCHEMA = "nnunet-tubeconv/report/1"
REPORT_JSON = "report.json"


def report_json(suite: dict[str, Any], groups: list[GroupAnalysis], n_resamples: int, seed: int, alpha: float,
                min_pairs: int, complete_case: bool, n_permutations: int) -> dict[str, Any]:
    """The machine-readable verdicts (``report.json``): the test, the verdict rule and every comparison."""
    return {
        "schema": REPORT_SCHEMA, "suite": suite.get("name"), "baseline": suite.get("baseline"),
        "test": st.TEST_NAME, "exact_max_n": st.EXACT_MAX_N, "n_permutations": n_permutations,
        "direction_rule": st.DIRECTION_RULE, "alpha": alpha, "n_resamples": n_resamples, "seed": seed,
        "min_pairs": min_pairs, "complete_case": complete_case, "not_tested": dict(st.NOT_TESTED),
        "families": [{"dataset": g.dataset, "configuration": g.configuration, "label": g.label,
                      "label_name": g.label_name, "expected_cases": g.expected_cases,
                      "cases": {a: len(g.values[a]) for a in g.arms}, "seeds": g.seeds,
                      "comparisons": [c.to_dict() for c in g.comparisons], "notes": list(dict.fromkeys(g.notes))}
                     for g in groups],
        "across_datasets": _across_json(groups, str(suite.get("baseline")), alpha, seed, n_permutations),
    }


def _across_json(groups: list[GroupAnalysis], baseline: str, alpha: float, seed: int,
                 n_permutations: int) -> dict[str, Any] | None:
    if len({g.dataset for g in groups}) < 2:
        return None
    mean_rank, rows = across_datasets(groups, baseline, alpha, seed, n_permutations)
    return {"method": "mean rank per family; sign-flip test of the family-averaged mean difference stratified by "
                      "family, Holm over variant x metric", "mean_rank": mean_rank,
            "tests": [asdict(r) for r in rows]}


def write_report(results_dir: str | Path, n_resamples: int = st.N_RESAMPLES, seed: int = 0, alpha: float = st.ALPHA,
                 min_pairs: int = st.MIN_PAIRS, complete_case: bool = False,
                 n_permutations: int = st.N_PERMUTATIONS) -> tuple[Path, Path]:
    """Analyse ``results_dir`` and write ``report.md``, ``report.html``, ``report.json`` and ``figures/*.png``."""
    root = Path(results_dir)
    suite, units = load_results_dir(root)
    groups = analyse(suite, units, n_resamples, seed, alpha, min_pairs, complete_case, n_permutations)
    heldout = analyse(suite, units, n_resamples, seed, alpha, min_pairs, complete_case, n_permutations,
                      split=layout.TEST_SPLIT)
    title, blocks = build_document(suite, units, groups, n_resamples, seed, alpha, min_pairs, heldout)
    fig_dir = root / "figures"
    fig_dir.mkdir(exist_ok=True)
    for b in blocks:
        if b.kind == "img":
            (fig_dir / b.filename).write_bytes(b.png)
    md, page = root / "report.md", root / "report.html"
    md.write_text(render_markdown(title, blocks), encoding="utf-8")
    page.write_text(render_html(title, blocks), encoding="utf-8")
    from nnunet_tubeconv.evaluation.serialise import dumps

    rep = report_json(suite, groups, n_resamples, seed, alpha, min_pairs, complete_case, n_permutations)
    rep["heldout_test"] = report_json(suite, heldout, n_resamples, seed, alpha, min_pairs, complete_case,
                                      n_permutations)["families"]
    (root / REPORT_JSON).write_text(dumps(rep), encoding="utf-8")
    return md, page


# ----------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="benchmark results folder (holds suite.json)")
    parser.add_argument("--n-resamples", type=int, default=st.N_RESAMPLES,
                        help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=st.ALPHA, help="family-wise error rate (default: %(default)s)")
    parser.add_argument("--complete-case", action="store_true",
                        help="give verdicts on the cases both arms have even when an arm lacks cases (default: such "
                             "verdicts are withheld)")


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    # bad input (ValueError, FileNotFoundError; a broken suite.json is a JSONDecodeError, a ValueError) is reported by
    # the CLI with exit status 2
    if args.n_resamples < 1 or not 0 < args.alpha < 1:
        raise ValueError(f"--n-resamples must be >= 1 and --alpha in (0, 1), got {args.n_resamples} and {args.alpha}")
    md, page = write_report(args.results_dir, args.n_resamples, args.seed, args.alpha,
                            complete_case=args.complete_case)
    print(f"wrote {md} and {page}")
    return 0
