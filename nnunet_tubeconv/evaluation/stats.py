"""Paired statistics for "is the variant better than the baseline on the same cases?".

Inputs are per-case values of a baseline and a variant on the same cases (paired by key, e.g. ``(case, label)``).
For each metric and variant:

* descriptive: mean, sd, median, IQR per arm (:func:`describe`);
* the paired difference ``variant - baseline``: its mean with a seeded percentile-bootstrap 95% CI
  (>= 10,000 resamples, :func:`bootstrap_ci`), the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``,
  zero differences dropped as in Wilcoxon's original test) and the matched-pairs rank-biserial correlation
  (Kerby, Compr. Psychol. 2014: ``(R+ - R-) / (R+ + R-)`` over the signed ranks; +1 = variant larger in every pair);
* Holm's step-down correction (Holm, Scand. J. Stat. 1979) over every (variant, metric) test of one family
  (:func:`holm`);
* the noise floor: ``|mean(seed_a - seed_b)|`` of the baseline against itself when it ran with two seeds.

Verdicts, with the metric's direction applied (``metrics.HIGHER_IS_BETTER``: a lower HD95 or Betti error is a gain):

* ``"better"``: Holm-adjusted p < alpha, the CI excludes 0 on the favourable side, and the gain exceeds the noise
  floor (when no noise floor exists the verdict still stands, with a note saying so);
* ``"worse"``: the mirror image;
* ``"too few pairs"``: fewer than ``min_pairs`` complete pairs (default 6, the smallest n at which a two-sided
  Wilcoxon test can reach p < 0.05);
* otherwise ``"no evidence of a difference"``.

Pairs where either value is NaN or infinite are dropped before anything is computed; how many is reported.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from nnunet_tubeconv.evaluation.metrics import HIGHER_IS_BETTER

BETTER = "better"
WORSE = "worse"
NO_EVIDENCE = "no evidence of a difference"
TOO_FEW = "too few pairs"
MIN_PAIRS = 6
N_RESAMPLES = 10_000


def _finite(values) -> np.ndarray:
    arr = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def describe(values) -> dict[str, float]:
    """``{"n", "mean", "sd", "median", "q1", "q3", "iqr"}`` of the finite values (NaN statistics when none)."""
    arr = _finite(values)
    if arr.size == 0:
        return {"n": 0, **{k: math.nan for k in ("mean", "sd", "median", "q1", "q3", "iqr")}}
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {"n": int(arr.size), "mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
            "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def pair_up(baseline: Mapping[Hashable, float], variant: Mapping[Hashable, float]
            ) -> tuple[np.ndarray, np.ndarray, list[Hashable], int]:
    """Align two ``{key: value}`` maps on their common keys (sorted by ``str``) and drop non-finite pairs.

    Returns ``(baseline_values, variant_values, keys, n_dropped)``; ``n_dropped`` counts common keys whose pair held
    a NaN/inf/None.
    """
    common = sorted(set(baseline) & set(variant), key=str)
    keys, b, v = [], [], []
    for k in common:
        x, y = baseline[k], variant[k]
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        keys.append(k)
        b.append(float(x))
        v.append(float(y))
    return np.asarray(b), np.asarray(v), keys, len(common) - len(keys)


def bootstrap_ci(diff, n_resamples: int = N_RESAMPLES, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``diff`` (1-D), resampling pairs with replacement.

    Seeded (``numpy.random.default_rng(seed)``), so the same input and seed give the same interval.
    """
    d = np.asarray(diff, dtype=float)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"diff must be a non-empty 1-D array of finite numbers, got shape {d.shape}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_resamples))
    chunk = max(1, 4_000_000 // d.size)  # bounds the index matrix to ~32 MB
    for start in range(0, means.size, chunk):
        stop = min(start + chunk, means.size)
        means[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def wilcoxon_p(diff) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``diff``; 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    d = np.asarray(diff, dtype=float)
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def rank_biserial(diff) -> float:
    """Matched-pairs rank-biserial correlation in [-1, 1] (zeros dropped; 0 when nothing is left)."""
    from scipy.stats import rankdata

    d = np.asarray(diff, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order; NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def noise_floor(seed_a: Mapping[Hashable, float], seed_b: Mapping[Hashable, float]) -> float | None:
    """``|mean(seed_a - seed_b)|`` over the finite common pairs of two runs of the same arm (None if no pair)."""
    a, b, _, _ = pair_up(seed_a, seed_b)
    if a.size == 0:
        return None
    return float(abs(np.mean(a - b)))


@dataclass
class PairedComparison:
    """One variant-vs-baseline test on one metric. Differences are ``variant - baseline`` (raw, not signed by
    direction); ``gain`` is the difference turned so that positive means better."""

    metric: str
    variant: str
    baseline: str
    higher_is_better: bool
    n: int
    n_dropped: int
    baseline_stats: dict[str, float] = field(default_factory=dict)
    variant_stats: dict[str, float] = field(default_factory=dict)
    mean_diff: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    p_holm: float = math.nan
    rank_biserial: float = math.nan
    noise_floor: float | None = None
    verdict: str = TOO_FEW
    note: str = ""

    @property
    def gain(self) -> float:
        return self.mean_diff if self.higher_is_better else -self.mean_diff

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gain"] = self.gain
        return d


def paired_comparison(baseline: Mapping[Hashable, float], variant: Mapping[Hashable, float], metric: str,
                      variant_name: str = "variant", baseline_name: str = "baseline",
                      noise: float | None = None, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      min_pairs: int = MIN_PAIRS) -> PairedComparison:
    """Everything but the Holm step and the verdict for one metric (see :func:`finalise`)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known (with direction): {sorted(HIGHER_IS_BETTER)}")
    b, v, _, dropped = pair_up(baseline, variant)
    c = PairedComparison(metric=metric, variant=variant_name, baseline=baseline_name,
                         higher_is_better=HIGHER_IS_BETTER[metric], n=int(b.size), n_dropped=dropped,
                         baseline_stats=describe(b), variant_stats=describe(v), noise_floor=noise)
    if b.size == 0:
        c.note = "no complete pairs"
        return c
    d = v - b
    c.mean_diff = float(d.mean())
    c.rank_biserial = rank_biserial(d)
    if b.size < min_pairs:
        c.note = f"only {b.size} complete pairs; at least {min_pairs} are needed for a test at p < 0.05"
        return c
    c.ci_low, c.ci_high = bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
    c.p_value = wilcoxon_p(d)
    return c


def finalise(comparisons: Sequence[PairedComparison], alpha: float = 0.05) -> list[PairedComparison]:
    """Holm-adjust the p-values of one family of comparisons and set each verdict (in place; returns the list)."""
    adjusted = holm([c.p_value for c in comparisons])
    for c, p in zip(comparisons, adjusted):
        c.p_holm = p
        c.verdict, note = _verdict(c, alpha)
        c.note = "; ".join(x for x in (c.note, note) if x)
    return list(comparisons)


def _verdict(c: PairedComparison, alpha: float) -> tuple[str, str]:
    if not math.isfinite(c.p_value):
        return TOO_FEW, ""
    ci_side = 1 if c.ci_low > 0 else -1 if c.ci_high < 0 else 0
    if not (c.p_holm < alpha and ci_side != 0):
        return NO_EVIDENCE, ""
    favourable = ci_side == (1 if c.higher_is_better else -1)
    gain = abs(c.mean_diff)
    if c.noise_floor is None:
        return (BETTER if favourable else WORSE), "no noise floor (baseline ran with one seed)"
    if gain <= c.noise_floor:
        return NO_EVIDENCE, f"|difference| {gain:.4g} within the baseline's seed-to-seed noise {c.noise_floor:.4g}"
    return (BETTER if favourable else WORSE), ""


def compare_arms(values: Mapping[str, Mapping[Hashable, Mapping[str, float]]], baseline: str,
                 metrics: Sequence[str], baseline_repeats: Sequence[Mapping[Hashable, Mapping[str, float]]] = (),
                 alpha: float = 0.05, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 min_pairs: int = MIN_PAIRS) -> list[PairedComparison]:
    """Every variant against ``baseline`` on every metric, Holm-corrected together as one family.

    values: ``{arm: {pair_key: {metric: value}}}``. baseline_repeats: the baseline's per-seed values (two or more
    runs) for the noise floor, taken from the first two.
    """
    if baseline not in values:
        raise ValueError(f"baseline arm {baseline!r} not among the arms {sorted(values)}")
    floors: dict[str, float | None] = {}
    for m in metrics:
        floors[m] = None
        if len(baseline_repeats) >= 2:
            floors[m] = noise_floor(_column(baseline_repeats[0], m), _column(baseline_repeats[1], m))
    out = []
    for arm in values:
        if arm == baseline:
            continue
        for m in metrics:
            out.append(paired_comparison(_column(values[baseline], m), _column(values[arm], m), m, arm, baseline,
                                         floors[m], n_resamples, seed, min_pairs))
    return finalise(out, alpha)


def _column(rows: Mapping[Hashable, Mapping[str, float]], metric: str) -> dict[Hashable, float]:
    return {k: r.get(metric) for k, r in rows.items() if metric in r}
