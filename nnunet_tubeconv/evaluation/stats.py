"""Paired statistics for "is the variant better than the baseline on the same cases?".

Inputs are per-case values of a baseline and a variant on the same cases (paired by key, e.g. ``(case, label)``).
For each metric and variant:

* descriptive: mean, sd, median, IQR per arm (:func:`describe`);
* the paired difference ``variant - baseline``: its mean with a seeded percentile-bootstrap 95% CI
  (>= 10,000 resamples, :func:`bootstrap_ci`);
* **the test**: a two-sided paired sign-flip permutation test of the *mean* difference (:func:`sign_flip_p`; Fisher
  1935, Good, "Permutation tests", 2005): under "no difference" every pair's difference is as likely to have either
  sign, so the p-value is the share of the ``2^n`` sign patterns whose mean is at least as far from 0 as the observed
  one. Exact enumeration up to :data:`EXACT_MAX_N` pairs, a seeded Monte-Carlo draw of :data:`N_PERMUTATIONS`
  patterns above (``p = (1 + hits) / (1 + draws)``, never 0). It tests the quantity the CI estimates, so the test
  and the CI cannot point different ways because they look at different things;
* beside it, for the reader: the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``) and the
  matched-pairs rank-biserial correlation (Kerby, Compr. Psychol. 2014: ``(R+ - R-) / (R+ + R-)`` over the signed
  ranks; +1 = variant larger in every pair), which say what the *typical* case did;
* Holm's step-down correction (Holm, Scand. J. Stat. 1979) over every tested (variant, metric) of one family
  (:func:`holm`); IoU is reported but not tested (per case it is a monotone function of Dice, see
  :data:`NOT_TESTED`);
* power: the smallest p the test can give with ``n`` pairs is ``2 / 2^n`` (all differences of one sign; with a
  Monte-Carlo test also ``>= 1 / (1 + draws)``), so the smallest Holm-adjusted p reachable in a family of ``m``
  tests is ``m * 2 / 2^n`` (:func:`smallest_p`);
* the noise floor: ``|mean(seed_a - seed_b)|`` of the baseline against itself when it ran with two seeds, with the
  bootstrap CI of ``mean(seed_a - seed_b)`` as its uncertainty (:func:`noise_floor_ci`).

Verdicts (:data:`DIRECTION_RULE`), with the metric's direction applied (``metrics.HIGHER_IS_BETTER``: a lower HD95
or Betti error is a gain), checked in this order:

* ``"withheld: cases missing"``: an arm lacks cases the other has (e.g. a failed fold), unless the caller asks for
  the complete-case analysis (``complete_case=True``);
* ``"too few cases to decide"``: fewer than ``min_pairs`` complete pairs, or the smallest adjusted p reachable with
  this n and family size is not below alpha (the note gives n, m and that p);
* ``"no evidence of a difference"``: Holm-adjusted p >= alpha, or the CI contains 0;
* ``"mean and typical case disagree"``: the test and the CI say the mean moved one way but the rank-biserial
  correlation has the other sign (or is 0): most cases moved the other way (e.g. 36 slightly worse, 4 much better);
* ``"better"`` / ``"worse"``: otherwise, if the gain exceeds the noise floor (when no noise floor exists the verdict
  still stands, with a note saying so); within the floor it is "no evidence of a difference" with a note.

Pairs where either value is NaN or infinite are dropped before anything is computed; how many is reported.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from nnunet_tubeconv.evaluation.metrics import HIGHER_IS_BETTER

BETTER = "better"
WORSE = "worse"
NO_EVIDENCE = "no evidence of a difference"
TOO_FEW = "too few cases to decide"
MIXED = "mean and typical case disagree"
WITHHELD = "withheld: cases missing"
NOT_TESTED_VERDICT = "not tested"
MIN_PAIRS = 6
N_RESAMPLES = 10_000
N_PERMUTATIONS = 20_000
EXACT_MAX_N = 16
ALPHA = 0.05

#: metrics reported but kept out of the tested family, and why
_ROBUST_BETTI = ("a fragment-robust view of the Betti errors, shown beside them; kept out of the tested family so "
                 "that it costs no power (the raw Betti errors are tested)")
_CALIBRE = ("recall of the reference centreline in one calibre band: a decomposition of clDice's sensitivity term "
            "(tested as clDice), shown to say where an arm gains or loses; testing it too would count that evidence "
            "twice and cost the family power")
NOT_TESTED: dict[str, str] = {
    "recall_thin": _CALIBRE,
    "recall_medium": _CALIBRE,
    "recall_thick": _CALIBRE,
    "iou": "per case a monotone function of Dice (IoU = Dice / (2 - Dice)): tested as Dice",
    "betti0_error_filtered": _ROBUST_BETTI,
    "betti1_error_filtered": _ROBUST_BETTI,
    "betti2_error_filtered": _ROBUST_BETTI,
    "betti_error_patch": _ROBUST_BETTI,
}

TEST_NAME = "paired sign-flip permutation test of the mean difference (two-sided)"
DIRECTION_RULE = (
    "'better'/'worse' only when (1) both arms have every case (else 'withheld: cases missing', unless the "
    "complete-case analysis is asked for), (2) the smallest Holm-adjusted p reachable with n pairs in a family of m "
    "tests, m * 2 / 2^n, is below alpha (else 'too few cases to decide'), (3) the Holm-adjusted p of the paired "
    "sign-flip permutation test of the mean difference is below alpha and the 95% bootstrap CI of the mean "
    "difference excludes 0 (else 'no evidence of a difference'), (4) the matched-pairs rank-biserial correlation "
    "has the sign of the mean difference, i.e. the typical case moved the same way as the mean (else 'mean and "
    "typical case disagree'), and (5) the mean difference exceeds the baseline's seed-to-seed noise floor when one "
    "was measured (else 'no evidence of a difference')."
)


def finite(values) -> np.ndarray:
    arr = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def describe(values) -> dict[str, float]:
    """``{"n", "mean", "sd", "median", "q1", "q3", "iqr"}`` of the finite values (NaN statistics when none)."""
    arr = finite(values)
    if arr.size == 0:
        return {"n": 0, **{k: math.nan for k in ("mean", "sd", "median", "q1", "q3", "iqr")}}
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {"n": int(arr.size), "mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
            "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def pair_up(baseline: Mapping[Hashable, float], variant: Mapping[Hashable, float]
            ) -> tuple[np.ndarray, np.ndarray, list[Hashable], int]:
    """Align two ``{key: value}`` maps on their common keys (sorted by ``str``) and drop non-finite pairs.

    Returns ``(baseline_values, variant_values, keys, n_dropped)``; ``n_dropped`` counts common keys whose pair held
    a NaN/inf/None. Keys present in only one map are not pairs at all: see :func:`missing_keys`.
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


def missing_keys(expected: Iterable[Hashable], present: Iterable[Hashable]) -> list[Hashable]:
    """The expected keys an arm lacks (sorted by ``str``)."""
    have = set(present)
    return sorted((k for k in set(expected) if k not in have), key=str)


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


def sign_flip_p(diff, n_permutations: int = N_PERMUTATIONS, seed: int = 0, exact_max_n: int = EXACT_MAX_N) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of ``mean(diff) == 0``.

    Exact (all ``2^n`` sign patterns) for ``n <= exact_max_n``; otherwise ``n_permutations`` seeded random patterns
    and ``p = (1 + hits) / (1 + n_permutations)``. A pattern is a hit when ``|mean| >= |observed mean|`` (with a
    relative tolerance of 1e-9 for floating-point ties). 1.0 when every difference is zero.
    """
    d = np.asarray(diff, dtype=float)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"diff must be a non-empty 1-D array of finite numbers, got shape {d.shape}")
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    observed = abs(d.sum())
    if observed == 0:
        return 1.0
    tol = 1e-9 * np.abs(d).sum()
    n = d.size
    if n <= exact_max_n:
        hits = 0
        codes = np.arange(2**n, dtype=np.int64)
        for start in range(0, codes.size, 1 << 16):
            block = codes[start:start + (1 << 16)]
            signs = 1.0 - 2.0 * ((block[:, None] >> np.arange(n)) & 1)
            hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
        return float(hits / 2**n)
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // n)
    for start in range(0, int(n_permutations), chunk):
        k = min(chunk, int(n_permutations) - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, n))
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
    return float((1 + hits) / (1 + int(n_permutations)))


def smallest_p(n: int, n_permutations: int = N_PERMUTATIONS, exact_max_n: int = EXACT_MAX_N) -> float:
    """The smallest p-value :func:`sign_flip_p` can return with ``n`` pairs: ``2 / 2^n`` (every difference of one
    sign and none zero), and at least ``1 / (1 + n_permutations)`` when the test is Monte-Carlo (``n > exact_max_n``).
    """
    if n <= 0:
        return 1.0
    p = min(1.0, 2.0 / 2.0**n)
    if n > exact_max_n:
        p = max(p, 1.0 / (1 + int(n_permutations)))
    return p


def stratified_sign_flip_p(diffs: Sequence[Sequence[float]], n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                           exact_max_n: int = EXACT_MAX_N) -> tuple[float, float]:
    """``(statistic, p)`` of a sign-flip test stratified by data set: the statistic is the mean over strata of each
    stratum's mean difference (every data set weighs the same, however many cases it has); under "no difference"
    each case's sign flips independently, which keeps every case in its stratum. Returns ``(nan, nan)`` when no
    stratum has a case."""
    parts = [np.asarray(d, dtype=float) for d in diffs if len(d)]
    if not parts:
        return math.nan, math.nan
    weighted = np.concatenate([d / (len(parts) * d.size) for d in parts])
    return float(weighted.sum()), sign_flip_p(weighted, n_permutations, seed, exact_max_n)


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


def noise_floor_ci(seed_a: Mapping[Hashable, float], seed_b: Mapping[Hashable, float],
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float, float] | None:
    """``(floor, low, high)``: the noise floor ``|mean(seed_a - seed_b)|`` and its 95% CI (its uncertainty: with few
    cases the seed-to-seed difference is itself poorly known): the bootstrap CI ``[l, h]`` of ``mean(seed_a -
    seed_b)`` mapped through ``|.|``, i.e. ``[min(|l|, |h|), max(|l|, |h|)]``, or ``[0, max(|l|, |h|)]`` when it
    contains 0. None if no pair."""
    a, b, _, _ = pair_up(seed_a, seed_b)
    if a.size == 0:
        return None
    low, high = bootstrap_ci(a - b, n_resamples=n_resamples, seed=seed)
    lo_abs = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
    return float(abs(np.mean(a - b))), lo_abs, max(abs(low), abs(high))


@dataclass
class PairedComparison:
    """One variant-vs-baseline test on one metric. Differences are ``variant - baseline`` (raw, not signed by
    direction); ``gain`` is the difference turned so that positive means better. ``p_value`` is the sign-flip
    permutation test's (:data:`TEST_NAME`); ``wilcoxon_p`` is shown beside it, not used for the verdict."""

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
    wilcoxon_p: float = math.nan
    rank_biserial: float = math.nan
    noise_floor: float | None = None
    noise_floor_ci: tuple[float, float] | None = None
    n_expected: int = 0
    missing_baseline: list = field(default_factory=list)
    missing_variant: list = field(default_factory=list)
    tested: bool = True
    family_size: int = 0
    p_min: float = math.nan
    p_min_adjusted: float = math.nan
    complete_case: bool = False
    verdict: str = TOO_FEW
    note: str = ""

    @property
    def gain(self) -> float:
        return self.mean_diff if self.higher_is_better else -self.mean_diff

    @property
    def has_missing(self) -> bool:
        return bool(self.missing_baseline or self.missing_variant)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gain"] = self.gain
        d["missing_baseline"] = [str(k) for k in self.missing_baseline]
        d["missing_variant"] = [str(k) for k in self.missing_variant]
        return d


def paired_comparison(baseline: Mapping[Hashable, float], variant: Mapping[Hashable, float], metric: str,
                      variant_name: str = "variant", baseline_name: str = "baseline",
                      noise: float | None = None, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      min_pairs: int = MIN_PAIRS, expected: Iterable[Hashable] | None = None,
                      noise_ci: tuple[float, float] | None = None, n_permutations: int = N_PERMUTATIONS,
                      ) -> PairedComparison:
    """Everything but the Holm step and the verdict for one metric (see :func:`finalise`).

    expected: the keys both arms should have (default: the union of both maps' keys); the ones an arm lacks are
    listed in ``missing_baseline`` / ``missing_variant``.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; known (with direction): {sorted(HIGHER_IS_BETTER)}")
    b, v, _, dropped = pair_up(baseline, variant)
    expected = set(baseline) | set(variant) if expected is None else set(expected)
    c = PairedComparison(metric=metric, variant=variant_name, baseline=baseline_name,
                         higher_is_better=HIGHER_IS_BETTER[metric], n=int(b.size), n_dropped=dropped,
                         baseline_stats=describe(b), variant_stats=describe(v), noise_floor=noise,
                         noise_floor_ci=noise_ci, n_expected=len(expected),
                         missing_baseline=missing_keys(expected, baseline),
                         missing_variant=missing_keys(expected, variant), tested=metric not in NOT_TESTED,
                         p_min=smallest_p(int(b.size), n_permutations))
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
    c.wilcoxon_p = wilcoxon_p(d)
    if c.tested:
        c.p_value = sign_flip_p(d, n_permutations=n_permutations, seed=seed)
    return c


def finalise(comparisons: Sequence[PairedComparison], alpha: float = ALPHA,
             complete_case: bool = False) -> list[PairedComparison]:
    """Holm-adjust the p-values of one family of comparisons and set each verdict (in place; returns the list).

    The family is every tested comparison (IoU and other :data:`NOT_TESTED` metrics stay out); ``m`` is the number
    of them that have a p-value.
    """
    adjusted = holm([c.p_value if c.tested else math.nan for c in comparisons])
    m = sum(1 for c in comparisons if c.tested and math.isfinite(c.p_value))
    for c, p in zip(comparisons, adjusted):
        c.p_holm = p
        c.family_size = m
        c.complete_case = bool(complete_case)
        c.p_min_adjusted = min(1.0, max(m, 1) * c.p_min)
        c.verdict, note = _verdict(c, alpha, complete_case)
        c.note = _join(c.note, note)
    return list(comparisons)


def _missing_note(c: PairedComparison) -> str:
    parts = []
    for arm, keys in ((c.baseline, c.missing_baseline), (c.variant, c.missing_variant)):
        if keys:
            shown = ", ".join(str(k[0] if isinstance(k, tuple) else k) for k in keys[:4])
            parts.append(f"{arm} lacks {len(keys)} of {c.n_expected} cases ({shown}{', ...' if len(keys) > 4 else ''})")
    return "; ".join(parts)


def _join(*parts: str) -> str:
    return "; ".join(x for x in parts if x)


def _verdict(c: PairedComparison, alpha: float, complete_case: bool) -> tuple[str, str]:
    if not c.tested:
        return NOT_TESTED_VERDICT, NOT_TESTED.get(c.metric, "not in the tested family")
    missing = _missing_note(c)
    if c.has_missing and not complete_case:
        return WITHHELD, f"{missing}; verdict withheld (rerun the missing units, or ask for the complete-case analysis)"
    extra = f"complete-case analysis: {missing}" if c.has_missing else ""
    if not math.isfinite(c.p_value):
        return TOO_FEW, extra
    if not c.p_min_adjusted < alpha:
        return TOO_FEW, _join(f"n={c.n}, smallest reachable adjusted p={c.p_min_adjusted:.4g} (m={c.family_size} "
                              f"tests x 2/2^{c.n}) is not below alpha={alpha:g}", extra)
    ci_side = 1 if c.ci_low > 0 else -1 if c.ci_high < 0 else 0
    if not (c.p_holm < alpha and ci_side != 0):
        return NO_EVIDENCE, extra
    rb_side = 1 if c.rank_biserial > 0 else -1 if c.rank_biserial < 0 else 0
    if rb_side != ci_side:
        return MIXED, _join(f"mean difference {c.mean_diff:+.4g} but rank-biserial r = {c.rank_biserial:+.2f}: the "
                            "typical case moved the other way (or not at all)", extra)
    favourable = ci_side == (1 if c.higher_is_better else -1)
    gain = abs(c.mean_diff)
    if c.noise_floor is None:
        return (BETTER if favourable else WORSE), _join("no noise floor measured (baseline ran with one seed)", extra)
    if gain <= c.noise_floor:
        return NO_EVIDENCE, _join(f"|difference| {gain:.4g} within the baseline's seed-to-seed noise "
                                  f"{c.noise_floor:.4g}", extra)
    return (BETTER if favourable else WORSE), extra


def compare_arms(values: Mapping[str, Mapping[Hashable, Mapping[str, float]]], baseline: str,
                 metrics: Sequence[str], baseline_repeats: Sequence[Mapping[Hashable, Mapping[str, float]]] = (),
                 alpha: float = ALPHA, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 min_pairs: int = MIN_PAIRS, expected: Iterable[Hashable] | None = None,
                 complete_case: bool = False, n_permutations: int = N_PERMUTATIONS) -> list[PairedComparison]:
    """Every variant against ``baseline`` on every metric, Holm-corrected together as one family.

    values: ``{arm: {pair_key: {metric: value}}}``. baseline_repeats: the baseline's per-seed values (two or more
    runs) for the noise floor, taken from the first two. expected: the pair keys every arm should have (default:
    the union over all arms).
    """
    if baseline not in values:
        raise ValueError(f"baseline arm {baseline!r} not among the arms {sorted(values)}")
    if expected is None:
        expected = {k for rows in values.values() for k in rows}
    expected = set(expected)
    floors: dict[str, tuple[float, float, float] | None] = {}
    for m in metrics:
        floors[m] = None
        if len(baseline_repeats) >= 2:
            floors[m] = noise_floor_ci(_column(baseline_repeats[0], m), _column(baseline_repeats[1], m),
                                       n_resamples=n_resamples, seed=seed)
    out = []
    for arm in values:
        if arm == baseline:
            continue
        for m in metrics:
            fl = floors[m]
            out.append(paired_comparison(_column(values[baseline], m), _column(values[arm], m), m, arm, baseline,
                                         None if fl is None else fl[0], n_resamples, seed, min_pairs,
                                         expected={k for k in expected},
                                         noise_ci=None if fl is None else (fl[1], fl[2]),
                                         n_permutations=n_permutations))
    return finalise(out, alpha, complete_case)


def _column(rows: Mapping[Hashable, Mapping[str, float]], metric: str) -> dict[Hashable, float]:
    return {k: r.get(metric) for k, r in rows.items() if metric in r}
