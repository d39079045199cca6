"""Statistics over seeds: mean ± sample standard deviation, the two-sided Welch t-test and the
two-sided paired t-test.

The paper reports "mean ± std" over five runs and p-values between two methods (Tables I, III, IV,
Fig. 4(a)) without naming the test; the reproduction uses the two-sided Welch t-test (unequal
variances) over the per-seed values, and the sample standard deviation (``ddof=1``), and says so in
every report. Where seed k pairs the runs of two methods (the label-efficiency study: the same
label subset and fine-tuning seed), :func:`paired_t_test` tests the per-seed differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtr

FEWER_THAN_TWO = "fewer than 2 seeds"
ZERO_VARIANCE = "zero variance"
NON_FINITE = "non-finite values"


@dataclass(frozen=True)
class Summary:
    """Mean ± sample standard deviation of ``n`` values.

    Attributes:
        mean: arithmetic mean.
        std: sample standard deviation (``ddof=1``); ``nan`` when ``n < 2``.
        n: number of values (seeds).
    """

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation (``ddof=1``, the unbiased variance's root) of ``values``.

    Args:
        values: one value per seed. Shape: (n,), n >= 1.

    Returns:
        The :class:`Summary`; ``std`` is ``nan`` for a single value. Non-finite values propagate
        (a diverged run shows as ``nan`` or ``inf`` rather than being dropped silently).

    Raises:
        ValueError: ``values`` is empty or not one-dimensional.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values {x.shape}: expected a non-empty 1-D sequence")
    std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
    return Summary(mean=float(np.mean(x)), std=std, n=int(x.size))


@dataclass(frozen=True)
class WelchTest:
    """Result of :func:`welch_t_test`.

    Attributes:
        t: Welch's t statistic, ``(mean_a - mean_b) / sqrt(var_a/n_a + var_b/n_b)`` (``nan`` when
            not computable).
        df: Welch–Satterthwaite degrees of freedom (``nan`` when not computable).
        p_value: two-sided p-value, or ``None`` when the test is not applicable.
        reason: why ``p_value`` is ``None`` (:data:`FEWER_THAN_TWO`, :data:`ZERO_VARIANCE`,
            :data:`NON_FINITE`), else ``None``.
    """

    t: float
    df: float
    p_value: float | None
    reason: str | None = None


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchTest:
    """Two-sided Welch t-test of equal means for two independent samples with unequal variances.

    With sample means ``m``, sample variances ``v`` (``ddof=1``) and sizes ``n``::

        s2 = v_a / n_a + v_b / n_b
        t  = (m_a - m_b) / sqrt(s2)
        df = s2^2 / ((v_a / n_a)^2 / (n_a - 1) + (v_b / n_b)^2 / (n_b - 1))
        p  = 2 * P(T_df <= -|t|)

    which is ``scipy.stats.ttest_ind(a, b, equal_var=False)``.

    Args:
        a: per-seed values of the first method. Shape: (n_a,).
        b: per-seed values of the second method. Shape: (n_b,).

    Returns:
        A :class:`WelchTest`. Edge cases give ``p_value=None`` with the reason: fewer than 2 values
        in either sample (no variance estimate), a non-finite value, or both samples constant
        (``s2 = 0``: t is undefined, whatever the means).

    Raises:
        ValueError: ``a`` or ``b`` is not one-dimensional.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"a {x.shape}, b {y.shape}: expected two 1-D sequences")
    if x.size < 2 or y.size < 2:
        return WelchTest(math.nan, math.nan, None, FEWER_THAN_TWO)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return WelchTest(math.nan, math.nan, None, NON_FINITE)
    # A constant sample has exactly zero variance (np.var of [0.7] * 3 is 1e-32 from rounding).
    va = float(np.var(x, ddof=1)) / x.size if np.ptp(x) > 0 else 0.0
    vb = float(np.var(y, ddof=1)) / y.size if np.ptp(y) > 0 else 0.0
    s2 = va + vb
    if s2 == 0.0:
        return WelchTest(math.nan, math.nan, None, ZERO_VARIANCE)
    t = (float(np.mean(x)) - float(np.mean(y))) / math.sqrt(s2)
    df = s2**2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    p = 2.0 * float(stdtr(df, -abs(t)))
    return WelchTest(t=t, df=df, p_value=min(1.0, p))


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_t_test` (the fields of :class:`WelchTest`).

    Attributes:
        t: ``mean(d) / (sd(d) / sqrt(n))`` of the differences ``d = a - b`` (``nan`` when not
            computable).
        df: ``n - 1`` (``nan`` when not computable).
        p_value: two-sided p-value, or ``None`` when the test is not applicable.
        reason: why ``p_value`` is ``None``, else ``None``.
        n: number of pairs.
    """

    t: float
    df: float
    p_value: float | None
    reason: str | None = None
    n: int = 0


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of a zero mean difference between matched samples.

    ``a[k]`` and ``b[k]`` are one pair (seed k of two methods). With ``d = a - b``, its mean
    ``m``, sample standard deviation ``s`` (``ddof=1``) and ``n`` pairs::

        t  = m / (s / sqrt(n))
        df = n - 1
        p  = 2 * P(T_df <= -|t|)

    which is ``scipy.stats.ttest_rel(a, b)``.

    Args:
        a: per-seed values of the first method. Shape: (n,).
        b: per-seed values of the second method, in the same seed order. Shape: (n,).

    Returns:
        A :class:`PairedTest`. Edge cases give ``p_value=None`` with the reason: fewer than 2
        pairs, a non-finite value, or differences that are all equal (``s = 0``: t is undefined,
        or infinite, whatever the mean; scipy then returns ``nan`` or ``±inf``).

    Raises:
        ValueError: ``a`` or ``b`` is not one-dimensional, or their lengths differ.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"a {x.shape}, b {y.shape}: expected two 1-D sequences")
    if x.size != y.size:
        raise ValueError(f"a has {x.size} values, b {y.size}: a paired test needs one pair each")
    n = int(x.size)
    if n < 2:
        return PairedTest(math.nan, math.nan, None, FEWER_THAN_TWO, n)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return PairedTest(math.nan, math.nan, None, NON_FINITE, n)
    d = x - y
    # Constant differences have exactly zero variance (rounding would give ~1e-32 otherwise).
    if np.ptp(d) == 0:
        return PairedTest(math.nan, math.nan, None, ZERO_VARIANCE, n)
    t = float(np.mean(d)) / (float(np.std(d, ddof=1)) / math.sqrt(n))
    df = float(n - 1)
    p = 2.0 * float(stdtr(df, -abs(t)))
    return PairedTest(t=t, df=df, p_value=min(1.0, p), n=n)


def format_summary(summary: Summary | None, digits: int, factor: float = 1.0) -> str:
    """``"0.900 ± 0.006 (5)"``: mean ± std (number of seeds); one seed gives ``"0.900 (1)"``.

    Args:
        summary: the values' summary, or ``None`` (no finished run): ``"—"``.
        digits: decimals of mean and std.
        factor: multiplies mean and std (100 shows an accuracy in percent).
    """
    if summary is None:
        return "—"
    mean = summary.mean * factor
    if summary.n < 2:
        return f"{mean:.{digits}f} ({summary.n})"
    return f"{mean:.{digits}f} ± {summary.std * factor:.{digits}f} ({summary.n})"


def format_p(test: WelchTest | PairedTest | None) -> str:
    """A p-value with 4 decimals (scientific below 1e-4), or ``"n/a (<reason>)"``."""
    if test is None:
        return "—"
    if test.p_value is None:
        return f"n/a ({test.reason})"
    if test.p_value < 1e-4:
        return f"{test.p_value:.1e}"
    return f"{test.p_value:.4f}"
