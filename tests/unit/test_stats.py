"""Paired statistics: verdicts on known cases, Holm by hand, seeded bootstrap, few pairs, NaN, metric direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from nnunet_tubeconv.evaluation import stats as st


def paired(values_a, values_b) -> tuple[dict, dict]:
    return ({f"c{i}": v for i, v in enumerate(values_a)}, {f"c{i}": v for i, v in enumerate(values_b)})


def one(baseline, variant, metric="dice", noise=None, **kw) -> st.PairedComparison:
    return st.finalise([st.paired_comparison(baseline, variant, metric, noise=noise, **kw)])[0]


def test_large_consistent_shift_is_better():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 30)
    b, v = paired(base, base + 0.05 + rng.normal(0, 0.005, 30))
    c = one(b, v, noise=0.01)
    assert c.verdict == st.BETTER
    assert c.ci_low > 0 and c.p_holm < 0.05 and c.rank_biserial == 1.0
    assert c.mean_diff == pytest.approx(0.05, abs=0.005)


def test_lower_is_better_metrics_turn_a_decrease_into_a_gain():
    rng = np.random.default_rng(1)
    base = rng.uniform(3, 10, 25)
    lower = base - 1.0 - rng.uniform(0, 0.2, 25)
    b, v = paired(base, lower)
    assert one(b, v, "hd95").verdict == st.BETTER
    assert one(b, v, "betti0_error").verdict == st.BETTER
    assert one(b, v, "dice").verdict == st.WORSE  # the same numbers on a higher-is-better metric
    b, v = paired(base, base + 1.0 + rng.uniform(0, 0.2, 25))
    assert one(b, v, "hd95").verdict == st.WORSE
    assert one(b, v, "hd95").gain < 0


def test_pure_noise_is_no_evidence():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.6, 0.8, 40)
    b, v = paired(base, base + rng.normal(0, 0.02, 40))
    c = one(b, v)
    assert c.verdict == st.NO_EVIDENCE
    assert c.ci_low < 0 < c.ci_high


def test_gain_within_noise_floor_is_no_evidence():
    base = np.linspace(0.6, 0.8, 20)
    b, v = paired(base, base + 0.02 + np.linspace(0, 0.001, 20))
    assert one(b, v, noise=0.005).verdict == st.BETTER
    c = one(b, v, noise=0.03)
    assert c.verdict == st.NO_EVIDENCE and "noise" in c.note
    assert "no noise floor" in one(b, v, noise=None).note


def test_holm_against_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = st.holm([0.2, math.nan, 0.9])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.4) and math.isnan(out[1]) and out[2] == pytest.approx(0.9)
    assert st.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1


def test_compare_arms_holm_spans_metrics_and_variants():
    rng = np.random.default_rng(3)
    cases = [f"c{i}" for i in range(12)]
    base = {c: {"dice": float(rng.uniform(0.6, 0.8)), "hd95": float(rng.uniform(2, 9))} for c in cases}
    arms = {"base": base}
    for name, shift in (("a", 0.03), ("b", 0.0)):
        arms[name] = {c: {"dice": r["dice"] + shift + float(rng.normal(0, 0.01)),
                          "hd95": r["hd95"] + float(rng.normal(0, 0.5))} for c, r in base.items()}
    comps = st.compare_arms(arms, "base", ["dice", "hd95"], n_resamples=2000)
    assert [(c.variant, c.metric) for c in comps] == [("a", "dice"), ("a", "hd95"), ("b", "dice"), ("b", "hd95")]
    assert [c.p_holm for c in comps] == pytest.approx(st.holm([c.p_value for c in comps]))
    assert comps[0].verdict == st.BETTER and comps[0].noise_floor is None
    with pytest.raises(ValueError, match="baseline arm"):
        st.compare_arms(arms, "nope", ["dice"])


def test_noise_floor_from_two_baseline_seeds():
    base0 = {f"c{i}": {"dice": 0.7 + 0.01 * i} for i in range(10)}
    base1 = {k: {"dice": r["dice"] - 0.004} for k, r in base0.items()}
    variant = {k: {"dice": r["dice"] + 0.003} for k, r in base0.items()}
    comps = st.compare_arms({"base": base0, "v": variant}, "base", ["dice"], baseline_repeats=[base0, base1],
                            n_resamples=1000)
    assert comps[0].noise_floor == pytest.approx(0.004)
    assert comps[0].verdict == st.NO_EVIDENCE  # a consistent +0.003 is below the seed-to-seed 0.004


def test_bootstrap_is_seeded_and_reproducible():
    rng = np.random.default_rng(4)
    d = rng.normal(0.1, 0.3, 50)
    first = st.bootstrap_ci(d, seed=7)
    assert st.bootstrap_ci(d, seed=7) == first
    assert st.bootstrap_ci(d, seed=8) != first
    assert first[0] < d.mean() < first[1]
    # the CI of a mean of 50 draws of sd 0.3 is about +-1.96 * 0.3 / sqrt(50)
    assert first[1] - first[0] == pytest.approx(2 * 1.96 * d.std(ddof=0) / math.sqrt(50), rel=0.15)
    assert st.bootstrap_ci(np.full(9, 0.25)) == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError):
        st.bootstrap_ci([])
    with pytest.raises(ValueError):
        st.bootstrap_ci([1.0, math.nan])


def test_default_bootstrap_uses_ten_thousand_resamples():
    assert st.N_RESAMPLES >= 10_000
    d = np.arange(10.0)
    assert st.bootstrap_ci(d) == st.bootstrap_ci(d, n_resamples=10_000, seed=0)


def test_too_few_pairs_is_a_statement_not_a_crash():
    b, v = paired([0.5, 0.6, 0.7], [0.9, 0.9, 0.9])
    c = one(b, v)
    assert c.verdict == st.TOO_FEW and c.n == 3
    assert "at least 6" in c.note
    assert math.isnan(c.p_value) and math.isnan(c.p_holm)
    nothing = st.finalise([st.paired_comparison({}, {"x": 1.0}, "dice")], complete_case=True)[0]
    assert nothing.verdict == st.TOO_FEW and nothing.n == 0 and "no complete pairs" in nothing.note
    assert one({}, {"x": 1.0}).verdict == st.WITHHELD  # the baseline lacks the variant's case


def test_nan_none_and_inf_pairs_are_dropped_and_counted():
    base = [0.5 + 0.01 * i for i in range(10)]
    var = [x + 0.05 for x in base]
    b, v = paired(base + [math.nan, 0.4, None], var + [0.5, math.inf, 0.3])
    c = one(b, v)
    assert c.n == 10 and c.n_dropped == 3
    assert c.verdict == st.BETTER
    stats = st.describe([1.0, math.nan, 3.0, None])
    assert stats["n"] == 2 and stats["mean"] == 2.0
    assert st.describe([math.nan])["n"] == 0


def test_rank_biserial_by_hand_and_wilcoxon_matches_scipy():
    assert st.rank_biserial([1.0, -2.0, 3.0]) == pytest.approx((1 + 3 - 2) / 6)
    assert st.rank_biserial([0.0, 0.0]) == 0.0
    assert st.rank_biserial([-1.0, -2.0]) == -1.0
    d = np.array([0.3, -0.1, 0.4, 0.2, 0.5, -0.05, 0.25])
    assert st.wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue)
    assert st.wilcoxon_p(np.zeros(8)) == 1.0


def test_identical_arms_are_no_evidence():
    base = [0.5 + 0.01 * i for i in range(10)]
    c = one(*paired(base, base))
    assert c.verdict == st.NO_EVIDENCE and c.p_value == 1.0 and c.mean_diff == 0.0


def test_unknown_metric_is_a_value_error():
    with pytest.raises(ValueError, match="unknown metric"):
        st.paired_comparison({"a": 1.0}, {"a": 2.0}, "accuracy")


# ------------------------------------------------------------------ direction, power, missing cases, floor
def test_sign_flip_p_exact_by_hand_and_against_scipy():
    assert st.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # only +++ and --- reach |sum| = 6
    assert st.sign_flip_p([1.0, 2.0, -3.0]) == pytest.approx(1.0)  # observed sum 0: every pattern is as extreme
    assert st.sign_flip_p(np.ones(8)) == pytest.approx(2 / 256)
    assert st.sign_flip_p(np.zeros(5)) == 1.0
    from scipy.stats import permutation_test

    d = np.random.default_rng(5).normal(0.2, 1.0, 11)
    ref = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                           alternative="two-sided").pvalue
    assert st.sign_flip_p(d) == pytest.approx(ref)
    big = np.random.default_rng(6).normal(0.3, 1.0, 30)  # Monte-Carlo branch: seeded, close to scipy's estimate
    assert st.sign_flip_p(big, seed=1) == st.sign_flip_p(big, seed=1)
    ref = permutation_test((big,), np.mean, permutation_type="samples", n_resamples=200_000, random_state=0,
                           alternative="two-sided").pvalue
    assert st.sign_flip_p(big, n_permutations=200_000) == pytest.approx(ref, abs=0.005)
    with pytest.raises(ValueError, match="non-empty"):
        st.sign_flip_p([])


def test_thirty_six_slightly_worse_four_much_better_is_not_better():
    """The case that changed the direction rule: the mean rises, the typical case falls. The old rule (Wilcoxon p +
    bootstrap CI of the mean) said "better": Wilcoxon p = 3.6e-4 and the CI lies above 0, with r = -0.62."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0.2, 0.4, 40)
    diff = np.concatenate([-0.01 - rng.uniform(0, 0.005, 36), 0.5 + rng.uniform(0, 0.02, 4)])
    c = one(*paired(base, base + diff))
    assert c.rank_biserial == pytest.approx(-0.6244, abs=1e-4) and c.mean_diff > 0
    assert c.wilcoxon_p == pytest.approx(3.57e-4, rel=0.01) and c.ci_low > 0  # what the old rule called "better"
    assert c.verdict == st.NO_EVIDENCE  # the mean rests on 4 cases: ~2/16 of the sign patterns reach it
    assert c.p_value == pytest.approx(0.121, abs=0.01)


def test_significant_mean_with_opposite_typical_case_is_mixed():
    base = np.linspace(0.6, 0.8, 40)
    diff = np.concatenate([np.full(30, -0.001), np.full(10, 0.1)])
    c = one(*paired(base, base + diff))
    assert c.p_holm < 0.05 and c.ci_low > 0
    assert c.rank_biserial == pytest.approx((355 - 465) / 820)  # ranks 31..40 up, 1..30 down
    assert c.verdict == st.MIXED and "typical case" in c.note


def test_power_eight_pairs_seven_tested_metrics_cannot_decide_six_can():
    cases = [f"c{i}" for i in range(8)]
    metrics7 = ["dice", "hd95", "nsd", "cldice", "betti0_error", "betti1_error", "betti2_error"]
    base = {c: {m: 0.5 + 0.01 * i for m in metrics7 + ["iou"]} for i, c in enumerate(cases)}
    up = {m: (0.1 if HIB else -0.1) for m, HIB in st.HIGHER_IS_BETTER.items()}
    win = {c: {m: v + up[m] * (1 + 0.1 * i) for m, v in r.items()} for i, (c, r) in enumerate(base.items())}
    comps = st.compare_arms({"b": base, "v": win}, "b", metrics7 + ["iou"], n_resamples=1000)
    tested = [c for c in comps if c.metric != "iou"]
    assert all(c.p_value == pytest.approx(2 / 256) for c in tested)
    assert all(c.family_size == 7 and c.p_min_adjusted == pytest.approx(7 * 2 / 256) for c in tested)
    assert all(c.verdict == st.TOO_FEW for c in tested)
    assert "n=8, smallest reachable adjusted p=0.05469" in tested[0].note
    iou = next(c for c in comps if c.metric == "iou")
    assert iou.verdict == st.NOT_TESTED_VERDICT and math.isnan(iou.p_holm) and "Dice" in iou.note
    six = st.compare_arms({"b": base, "v": win}, "b", metrics7[:6] + ["iou"], n_resamples=1000)
    assert [c.verdict for c in six if c.metric != "iou"] == [st.BETTER] * 6
    assert six[0].p_min_adjusted == pytest.approx(6 * 2 / 256) and six[0].p_holm == pytest.approx(6 * 2 / 256)
    assert st.smallest_p(8) == 2 / 256 and st.smallest_p(0) == 1.0
    assert st.smallest_p(40) == pytest.approx(1 / (1 + st.N_PERMUTATIONS))


def test_cases_missing_from_one_arm_withhold_the_verdict_unless_complete_case():
    base = {f"c{i}": {"dice": 0.6 + 0.01 * i} for i in range(12)}
    variant = {k: {"dice": r["dice"] + 0.05} for k, r in base.items() if k not in ("c3", "c7")}  # a failed fold
    comps = st.compare_arms({"b": base, "v": variant}, "b", ["dice"], n_resamples=1000)
    c = comps[0]
    assert c.n == 10 and c.n_expected == 12 and c.missing_variant == ["c3", "c7"] and c.missing_baseline == []
    assert c.verdict == st.WITHHELD and "v lacks 2 of 12 cases (c3, c7)" in c.note
    cc = st.compare_arms({"b": base, "v": variant}, "b", ["dice"], n_resamples=1000, complete_case=True)[0]
    assert cc.verdict == st.BETTER and "complete-case analysis" in cc.note
    expected = set(base) | {"c99"}  # the suite expected a case neither arm has
    c = st.compare_arms({"b": base, "v": dict(base)}, "b", ["dice"], expected=expected, n_resamples=100)[0]
    assert c.missing_baseline == ["c99"] and c.missing_variant == ["c99"] and c.verdict == st.WITHHELD


def test_noise_floor_has_its_own_confidence_interval():
    base0 = {f"c{i}": {"dice": 0.7 + 0.01 * i} for i in range(10)}
    base1 = {k: {"dice": r["dice"] - 0.004 + (0.002 if i % 2 else -0.002)} for i, (k, r) in enumerate(base0.items())}
    floor, low, high = st.noise_floor_ci({k: r["dice"] for k, r in base0.items()},
                                         {k: r["dice"] for k, r in base1.items()}, n_resamples=2000)
    assert floor == pytest.approx(0.004)
    assert 0.002 <= low < 0.004 < high <= 0.006
    # the interval is that of |mean seed difference|: the same numbers with the seeds swapped give the same interval
    assert st.noise_floor_ci({k: r["dice"] for k, r in base1.items()}, {k: r["dice"] for k, r in base0.items()},
                             n_resamples=2000) == pytest.approx((floor, low, high), abs=1e-3)
    around_zero = st.noise_floor_ci({"a": 0.1, "b": 0.2, "c": 0.3}, {"a": 0.2, "b": 0.1, "c": 0.3}, n_resamples=500)
    assert around_zero[0] == 0.0 and around_zero[1] == 0.0 and around_zero[2] > 0
    variant = {k: {"dice": r["dice"] + 0.05} for k, r in base0.items()}
    c = st.compare_arms({"b": base0, "v": variant}, "b", ["dice"], baseline_repeats=[base0, base1],
                        n_resamples=2000)[0]
    assert c.noise_floor == pytest.approx(0.004) and c.noise_floor_ci == pytest.approx((low, high))
    assert c.verdict == st.BETTER
    one_seed = st.compare_arms({"b": base0, "v": variant}, "b", ["dice"], n_resamples=500)[0]
    assert one_seed.noise_floor is None and "no noise floor measured" in one_seed.note


def test_stratified_sign_flip_weighs_every_data_set_the_same():
    stat, p = st.stratified_sign_flip_p([[1.0, 1.0], [3.0]])
    assert stat == pytest.approx((1.0 + 3.0) / 2)  # mean of the per-stratum means, not of the 3 cases (5/3)
    assert p == pytest.approx(2 / 8)  # weighted values 0.25, 0.25, 0.5: only +++ and --- reach |sum| = 1
    assert all(math.isnan(x) for x in st.stratified_sign_flip_p([[], []]))
