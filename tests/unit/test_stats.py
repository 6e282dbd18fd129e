import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import normalized_mutual_info_score

from dmlsynth import stats


def test_t_interval_is_the_paired_t_test():
    method = np.array([0.71, 0.74, 0.69, 0.75, 0.73])
    baseline = np.array([0.70, 0.71, 0.70, 0.72, 0.70])
    interval = stats.t_interval(method - baseline, confidence=0.95)
    differences = method - baseline
    half = scipy_stats.t.ppf(0.975, df=4) * differences.std(ddof=1) / np.sqrt(5)
    assert interval.estimate == pytest.approx(differences.mean())
    assert (interval.low, interval.high) == pytest.approx((differences.mean() - half, differences.mean() + half))
    assert interval.p == pytest.approx(scipy_stats.ttest_rel(method, baseline).pvalue)


def test_t_interval_needs_two_values_and_handles_zero_spread():
    one = stats.t_interval([0.3])
    assert one.estimate == 0.3 and np.isnan(one.low) and np.isnan(one.high) and np.isnan(one.p)
    assert stats.t_interval([0.0, 0.0, 0.0]) == stats.Interval(0.0, 0.0, 0.0, 1.0)
    assert stats.t_interval([0.1, 0.1]) == stats.Interval(0.1, 0.1, 0.1, 0.0)


def test_t_interval_covers_the_true_difference_95_percent_of_the_time():
    # 3 seeds, as in the default: a normal-quantile interval would cover only ~80 % here.
    rng = np.random.default_rng(0)
    truth, trials = 0.02, 2000
    covered = 0
    for _ in range(trials):
        interval = stats.t_interval(truth + rng.normal(scale=0.015, size=3))
        covered += interval.low <= truth <= interval.high
    assert 0.93 <= covered / trials <= 0.97


def test_holm_matches_hand_computation_and_skips_nan():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted = stats.holm(p)
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert np.isnan(stats.holm([float("nan")])).all()


def test_weighted_nmi_equals_scikit_learn_on_the_resampled_pairs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 300)
    clusters = (labels + (rng.random(300) < 0.3) * rng.integers(0, 5, 300)) % 7
    resamples = stats.QueryBootstrap(300, samples=30, seed=1)
    ours = stats.weighted_nmi(resamples.counts, labels, clusters, batch=7)
    for b in range(30):
        items = np.repeat(np.arange(300), resamples.counts[b].astype(int))
        assert ours[b] == pytest.approx(normalized_mutual_info_score(labels[items], clusters[items]), abs=1e-12)
    assert stats.weighted_nmi(np.ones((1, 300)), labels, clusters)[0] == pytest.approx(
        normalized_mutual_info_score(labels, clusters), abs=1e-12
    )


def test_query_bootstrap_resamples_are_seeded_and_are_resamples():
    a = stats.QueryBootstrap(50, samples=300, seed=3, batch=64)
    # The same resamples whatever the batching (memory) is.
    assert np.array_equal(a.counts, stats.QueryBootstrap(50, samples=300, seed=3, batch=300).counts)
    assert not np.array_equal(a.counts, stats.QueryBootstrap(50, samples=300, seed=4, batch=64).counts)
    assert (a.counts.sum(axis=1) == 50).all()
    # Replicates are the metric of each resample, counting only kept queries.
    rng = np.random.default_rng(0)
    per_query = {"kept": rng.random(50) < 0.9, "recall@1": (rng.random(50) < 0.7).astype(float)}
    per_query["recall@1"][~per_query["kept"]] = 0
    replicates = a.replicates(per_query, ["recall@1"])["recall@1"]
    for row in (0, 17, 299):
        items = np.repeat(np.arange(50), a.counts[row].astype(int))
        kept = per_query["kept"][items]
        assert replicates[row] == pytest.approx(per_query["recall@1"][items][kept].mean())


def test_paired_query_bootstrap_covers_the_true_difference():
    # A population of queries where the method finds 5 % more first hits than baseline.
    rng = np.random.default_rng(1)
    truth, trials, n = 0.05, 300, 400
    covered = 0
    for trial in range(trials):
        ability = rng.random(n)
        baseline = (ability < 0.75).astype(float)
        method = (ability < 0.80).astype(float)
        resamples = stats.QueryBootstrap(n, samples=500, seed=trial)
        kept = np.ones(n, bool)
        difference = (
            resamples.replicates({"kept": kept, "recall@1": method}, ["recall@1"])["recall@1"]
            - resamples.replicates({"kept": kept, "recall@1": baseline}, ["recall@1"])["recall@1"]
        )
        low, high = stats.percentile_interval(difference, 0.95)
        covered += low <= truth <= high
    assert 0.90 <= covered / trials <= 0.99


def test_bootstrap_p_value():
    assert stats.bootstrap_p(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    assert stats.bootstrap_p(np.linspace(-1, 1, 1001)) == pytest.approx(1.0)
    assert stats.bootstrap_p(np.r_[np.full(950, 0.1), np.full(50, -0.1)]) == pytest.approx(2 * 51 / 1001)


@pytest.mark.parametrize("n, level", [(3, 0.05 / 5), (5, 0.05), (10, 0.01)])
def test_the_stated_power_holds_by_simulation(n, level):
    # Paired differences of a known effect, the minimal detectable difference, drawn 20 000 times: the paired
    # t-test at the level rejects in 80 % of them (within 1.5 points; the Monte Carlo error is 0.3).
    sd = 0.02
    mdd = stats.minimal_detectable_difference(sd, n, level)
    draws = np.random.default_rng(7).normal(mdd, sd, size=(20000, n))
    p = scipy_stats.ttest_1samp(draws, 0.0, axis=1).pvalue
    assert np.mean(p < level) == pytest.approx(stats.POWER, abs=0.015)
    # ... and at half that effect the power is well below it (the MDD is the smallest such difference).
    half = np.random.default_rng(8).normal(mdd / 2, sd, size=(20000, n))
    assert np.mean(scipy_stats.ttest_1samp(half, 0.0, axis=1).pvalue < level) < stats.POWER - 0.2


def test_seeds_needed_is_the_fewest_that_reach_the_power():
    effect, sd, level = 0.01, 0.02, 0.01
    n = int(stats.seeds_needed(effect, sd, level))
    assert stats.paired_t_power(effect, sd, n, level) >= stats.POWER > stats.paired_t_power(effect, sd, n - 1, level)
    draws = np.random.default_rng(9).normal(effect, sd, size=(20000, n))
    assert np.mean(scipy_stats.ttest_1samp(draws, 0.0, axis=1).pvalue < level) == pytest.approx(stats.POWER, abs=0.02)
    assert stats.seeds_needed(0.0, sd, level) == np.inf and np.isnan(stats.seeds_needed(effect, 0.0, level))


def test_power_agrees_with_scipys_noncentral_t():
    for n, level in [(2, 0.05), (4, 0.01), (30, 0.05)]:
        critical = scipy_stats.t.ppf(1 - level / 2, n - 1)
        expected = scipy_stats.nct.sf(critical, n - 1, 0.5 * np.sqrt(n)) + scipy_stats.nct.cdf(-critical, n - 1, 0.5 * np.sqrt(n))
        assert stats.paired_t_power(0.5, 1.0, n, level) == pytest.approx(expected, rel=1e-6)


def test_holm_levels_give_intervals_that_agree_with_the_holm_verdict():
    rng = np.random.default_rng(3)
    alpha = 0.05
    for _ in range(300):
        m = int(rng.integers(1, 7))
        n = int(rng.integers(2, 6))
        samples = [rng.normal(rng.choice([0.0, 0.01, 0.03]), 0.01, n) for _ in range(m)]
        pvalues = [stats.t_interval(x).p for x in samples]
        rejected = stats.holm(pvalues) < alpha
        for x, level, reject in zip(samples, stats.holm_levels(pvalues, alpha), rejected):
            interval = stats.t_interval_of(float(np.mean(x)), float(np.std(x, ddof=1)), n, 1 - level)
            assert (interval.low > 0 or interval.high < 0) == reject


def test_holm_levels_by_hand():
    # p sorted 0.001 (rank 1 of 3), 0.02 (rank 2), 0.04 (rank 3): Holm rejects 0.001 at 0.05/3, 0.02 at 0.05/2,
    # and 0.04 at 0.05/1; NaN is no member of the family.
    levels = stats.holm_levels([0.02, np.nan, 0.001, 0.04], 0.05)
    assert levels[0] == pytest.approx(0.025) and np.isnan(levels[1])
    assert levels[2] == pytest.approx(0.05 / 3) and levels[3] == pytest.approx(0.05)
    # 0.03 is not rejected (0.03 > 0.05/2 at rank 2): its interval is Bonferroni's, at 0.05/3.
    assert list(stats.holm_levels([0.001, 0.03, 0.04], 0.05)) == pytest.approx([0.05 / 3, 0.05 / 3, 0.05 / 3])
