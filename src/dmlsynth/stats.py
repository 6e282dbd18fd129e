"""Statistics of the comparison with ``baseline``: is a difference more than noise?

Two sources of noise, two intervals:

- **Seeds** (training randomness). Runs of two methods with the same dataset,
  loss and seed are a pair; :func:`t_interval` gives the mean of the paired
  differences, its Student-t confidence interval and the paired t-test's
  p-value (a one-sample t-test of the differences against 0). It needs at
  least two pairs.
- **Queries** (which test images happen to be in the test set). Every run of
  a dataset is evaluated on the same test images, so one resample of the
  queries is applied to every run at once (:class:`QueryBootstrap`): the
  resampled difference of two runs is a *paired* bootstrap replicate, and one
  seed already gives an interval. It says nothing about training randomness.

:func:`holm` adjusts the p-values of the methods compared with one baseline
(Holm's step-down procedure, which controls the family-wise error rate).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np


# `statistics` in params.yaml overrides these (they change no run, only the table).


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    p: float  # two-sided p-value for "the true value is 0"


NOT_AVAILABLE = Interval(float("nan"), float("nan"), float("nan"), float("nan"))


def t_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values``, its Student-t interval and the t-test p-value against 0.

    With paired differences as ``values`` this is the paired t-test. Fewer
    than two values give no interval (NaN bounds and p). Identical values
    (zero spread) give a zero-width interval and p = 1 if they are 0, else 0.
    """
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return NOT_AVAILABLE
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, float("nan"), float("nan"), float("nan"))
    if np.ptp(x) == 0:
        return Interval(mean, mean, mean, 1.0 if mean == 0 else 0.0)
    result = stats.ttest_1samp(x, 0.0)
    ci = result.confidence_interval(confidence)
    return Interval(mean, float(ci.low), float(ci.high), float(result.pvalue))


def t_interval_of(mean: float, sd: float, n: int, confidence: float) -> Interval:
    """The Student-t interval of a mean of ``n`` values with standard deviation ``sd`` (p: NaN)."""
    from scipy import stats

    if n < 2 or not np.isfinite(sd):
        return Interval(mean, float("nan"), float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / np.sqrt(n)
    return Interval(mean, mean - half, mean + half, float("nan"))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN and does not count towards the family).

    The i-th smallest of m p-values becomes max over j <= i of (m - j + 1) p_(j),
    capped at 1; a hypothesis is rejected at level alpha when its adjusted
    p-value is below alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if len(valid) == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` range of bootstrap replicates (percentile method)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "the true value is 0": twice the smaller tail beyond 0.

    (count + 1) / (B + 1) keeps it above 0 with B replicates.
    """
    replicates = np.asarray(replicates, dtype=float)
    b = len(replicates)
    below = (np.count_nonzero(replicates <= 0) + 1) / (b + 1)
    above = (np.count_nonzero(replicates >= 0) + 1) / (b + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def weighted_nmi(weights: np.ndarray, labels: np.ndarray, clusters: np.ndarray, batch: int = 250) -> np.ndarray:
    """NMI of (label, cluster) pairs counted with each row of ``weights`` (B x N) as multiplicities.

    Row b is the NMI of the sample that holds item i ``weights[b, i]`` times:
    scikit-learn's ``normalized_mutual_info_score`` (mutual information over
    the arithmetic mean of the two entropies) of the resampled pairs.
    """
    from scipy import sparse

    weights = np.atleast_2d(np.asarray(weights))  # converted to float64 a batch of rows at a time
    _, label_codes = np.unique(labels, return_inverse=True)
    _, cluster_codes = np.unique(clusters, return_inverse=True)
    n_labels, n_clusters = int(label_codes.max()) + 1, int(cluster_codes.max()) + 1
    # (label, cluster) cell of every item, as an N x cells indicator: weights @ it = joint counts.
    cells = sparse.csc_matrix(
        (np.ones(len(label_codes)), (np.arange(len(label_codes)), label_codes.ravel() * n_clusters + cluster_codes.ravel())),
        shape=(len(label_codes), n_labels * n_clusters),
    )
    out = np.empty(len(weights))
    for start in range(0, len(weights), batch):
        rows = weights[start : start + batch].astype(np.float64)
        joint = np.asarray((cells.T @ rows.T).T).reshape(-1, n_labels, n_clusters)
        out[start : start + batch] = _nmi_of_joint_counts(joint)
    return out


def _nmi_of_joint_counts(joint: np.ndarray) -> np.ndarray:
    p = joint / joint.sum(axis=(1, 2), keepdims=True)
    pu, pv = p.sum(axis=2), p.sum(axis=1)
    outer = pu[:, :, None] * pv[:, None, :]
    positive = p > 0
    mi = np.zeros(len(p))
    np.add.at(mi, np.nonzero(positive)[0], p[positive] * np.log(p[positive] / outer[positive]))
    hu = -np.sum(pu * np.log(np.where(pu > 0, pu, 1.0)), axis=1)
    hv = -np.sum(pv * np.log(np.where(pv > 0, pv, 1.0)), axis=1)
    nmi = np.maximum(mi, 0.0) / np.maximum((hu + hv) / 2.0, np.finfo(np.float64).eps)
    # scikit-learn's convention: two single-cluster labelings are identical (NMI 1).
    nmi[(hu == 0) & (hv == 0)] = 1.0
    return nmi


class QueryBootstrap:
    """Resamples of one test set, applied to every run evaluated on it.

    ``samples`` resamples of the N test images are drawn with replacement from
    ``seed`` (NumPy's PCG64), as multiplicity counts (B x N). A run's
    replicates (:meth:`replicates`) are its metrics on each resample: the
    count-weighted mean of each per-query array over the kept queries, and
    NMI of the resampled (label, cluster) pairs. Same N, samples and seed ⇒
    the same resamples, whatever else is in the table.

    The counts are kept as the smallest unsigned integers that hold them (a
    count rarely exceeds 10) and turned into floats ``batch`` rows at a time:
    2,000 resamples of Stanford Online Products' 60,502 queries take 121 MB,
    not the 968 MB of float64 (benchmarks/bench_sop_scale.py).
    """

    def __init__(self, n_items: int, samples: int = 2000, seed: int = 0, batch: int = 250) -> None:
        if n_items < 1 or samples < 1:
            raise ValueError(f"need at least one item and one resample, got {n_items} items, {samples} resamples")
        rng = np.random.default_rng(seed)
        counts = []
        for start in range(0, samples, batch):
            rows = min(batch, samples - start)
            draws = rng.integers(0, n_items, size=(rows, n_items))
            offsets = (np.arange(rows) * n_items)[:, None]
            block = np.bincount((draws + offsets).ravel(), minlength=rows * n_items).reshape(rows, n_items)
            counts.append(block.astype(np.min_scalar_type(int(block.max()))))
        self.counts = np.concatenate(counts)  # the widest dtype of the blocks
        self.n_items = n_items
        self.samples = samples
        self.batch = batch

    def _weighted_sums(self, values: np.ndarray) -> np.ndarray:
        """``counts @ values`` (B sums), a batch of rows at a time in float64."""
        values = np.asarray(values, dtype=np.float64)
        return np.concatenate(
            [self.counts[start : start + self.batch].astype(np.float64) @ values for start in range(0, self.samples, self.batch)]
        )

    def replicates(self, per_query: Mapping[str, np.ndarray], metrics: Iterable[str]) -> dict[str, np.ndarray]:
        """``{metric: B replicates}`` of one run's per-query results (see ``dmlsynth.metrics.PER_QUERY_FILE``)."""
        kept = np.asarray(per_query["kept"], dtype=np.float64)
        if len(kept) != self.n_items:
            raise ValueError(f"the run has {len(kept)} test images, the resamples {self.n_items}")
        queries = self._weighted_sums(kept)
        out: dict[str, np.ndarray] = {}
        for name in metrics:
            if name.endswith("nmi"):  # "nmi", or "<prefix>nmi" with the clusters under "<prefix>clusters"
                clusters = name[: -len("nmi")] + "clusters"
                if clusters in per_query:
                    out[name] = weighted_nmi(self.counts, per_query["labels"], per_query[clusters])
            elif name in per_query:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name] = self._weighted_sums(per_query[name]) / queries
        return out


# Power of a paired comparison ------------------------------------------------------------------------------
# [project definition] The power every design is judged by, and the most seeds looked for.
POWER = 0.80
MAX_SEEDS = 1000


def paired_t_power(effect: float, sd: float, n: int, level: float) -> float:
    """The probability that the two-sided paired t-test at ``level`` rejects "no difference" with ``n`` pairs
    whose differences have mean ``effect`` and standard deviation ``sd``: P(|T| > t_{1-level/2, n-1}) for T
    noncentral t with n - 1 degrees of freedom and noncentrality effect·√n / sd."""
    from scipy import integrate, stats

    if n < 2 or not sd > 0:
        return float("nan")
    df = n - 1
    critical = stats.t.ppf(1.0 - level / 2.0, df)
    noncentrality = abs(effect) * np.sqrt(n) / sd
    value = float(stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality))
    if np.isfinite(value):
        return min(1.0, max(0.0, value))

    # Where scipy's noncentral t gives NaN (one degree of freedom and tiny levels, or huge df):
    # T = (Z + λ) / sqrt(V / df), V ~ χ²(df); integrate P(|T| > c | V) over V's density.
    def rejected(v: float) -> float:
        bound = critical * np.sqrt(v / df)
        return (stats.norm.sf(bound - noncentrality) + stats.norm.cdf(-bound - noncentrality)) * stats.chi2.pdf(v, df)

    # Over V's range but its 1e-12 tails, around its bulk (quad over [0, inf) misses a narrow peak at large df).
    low, high = stats.chi2.ppf(1e-12, df), stats.chi2.isf(1e-12, df)
    with warnings.catch_warnings():  # a power near 1 (a flat integrand) is summed to well below its stated precision
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        value, _ = integrate.quad(rejected, low, high, points=[df], limit=200)
    return float(min(1.0, max(0.0, value)))


def minimal_detectable_difference(sd: float, n: int, level: float, power: float = POWER) -> float:
    """The smallest true mean difference the paired t-test at ``level`` detects with ``power`` (NaN below two
    pairs or without spread): the root in δ of :func:`paired_t_power` (δ, sd, n, level) = power."""
    from scipy import optimize

    if n < 2 or not sd > 0:
        return float("nan")
    high = sd
    while paired_t_power(high, sd, n, level) < power:
        high *= 2.0
    return float(optimize.brentq(lambda d: paired_t_power(d, sd, n, level) - power, 0.0, high, xtol=1e-12 * sd))


def seeds_needed(effect: float, sd: float, level: float, power: float = POWER, most: int = MAX_SEEDS) -> float:
    """The fewest pairs (seeds) with which the paired t-test at ``level`` detects a true difference ``effect``
    with ``power``; NaN where there is no spread to judge by, ``inf`` where not even ``most`` would."""
    if not sd > 0 or not np.isfinite(effect):
        return float("nan")
    if paired_t_power(effect, sd, most, level) < power:
        return float("inf")
    low, high = 2, most  # power grows with n: bisect for the first n that reaches it
    while low < high:
        middle = (low + high) // 2
        if paired_t_power(effect, sd, middle, level) >= power:
            high = middle
        else:
            low = middle + 1
    return float(low)


def holm_levels(pvalues: Sequence[float], alpha: float) -> np.ndarray:
    """Per comparison, the level its verdict is taken at under Holm's procedure, for its interval: a rejected
    hypothesis of rank r (1: the smallest p) of m is rejected at α / (m − r + 1); one that is not rejected is
    judged at Bonferroni's α / m. An interval at its comparison's level excludes 0 exactly when Holm rejects it
    *[project definition]*: the non-rejected ones are Bonferroni's simultaneous intervals, the rejected ones
    those of the Holm step that rejected them (Holm-consistent intervals). NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    levels = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return levels
    adjusted = holm(p)
    order = valid[np.argsort(p[valid], kind="stable")]
    for rank, index in enumerate(order, start=1):
        levels[index] = alpha / (m - rank + 1) if adjusted[index] < alpha else alpha / m
    return levels
