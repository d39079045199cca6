"""Mean ± std over seeds, the Welch and the paired t-test, against scipy and hand-computed values."""

import math

import numpy as np
import pytest
from scipy import stats

from histodrl.experiments.stats import (
    FEWER_THAN_TWO,
    NON_FINITE,
    ZERO_VARIANCE,
    Summary,
    format_p,
    format_summary,
    paired_t_test,
    summarize,
    welch_t_test,
)


@pytest.mark.parametrize(
    ("n_a", "n_b", "scale_b", "shift"),
    [(5, 5, 1.0, 0.5), (2, 2, 3.0, 0.0), (3, 7, 0.1, -1.0), (5, 4, 10.0, 2.0), (10, 2, 1.0, 0.01)],
)
def test_welch_matches_scipy_ttest_ind_with_unequal_variances(n_a, n_b, scale_b, shift):
    rng = np.random.default_rng(n_a * 100 + n_b)
    a = rng.normal(0.0, 1.0, n_a)
    b = rng.normal(shift, scale_b, n_b)
    ours = welch_t_test(a, b)
    reference = stats.ttest_ind(a, b, equal_var=False)
    assert ours.reason is None
    assert ours.t == pytest.approx(reference.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_welch_hand_computed_case_with_two_degrees_of_freedom():
    # a = [0, 2], b = [3, 5]: means 1 and 4, variances 2 and 2, s2 = 2/2 + 2/2 = 2,
    # t = -3 / sqrt(2), df = 2^2 / (1^2/1 + 1^2/1) = 2. Student t with 2 df has
    # P(T <= -|t|) = 1/2 - |t| / (2 sqrt(2 + t^2)), so p = 1 - sqrt(4.5 / 6.5) = 1 - 3/sqrt(13).
    result = welch_t_test([0.0, 2.0], [3.0, 5.0])
    assert result.t == pytest.approx(-3 / math.sqrt(2), rel=1e-12)
    assert result.df == pytest.approx(2.0, rel=1e-12)
    assert result.p_value == pytest.approx(1 - 3 / math.sqrt(13), rel=1e-10)


def test_welch_is_symmetric_in_p_and_antisymmetric_in_t():
    a, b = [0.81, 0.83, 0.80], [0.85, 0.86, 0.88, 0.84]
    ab, ba = welch_t_test(a, b), welch_t_test(b, a)
    assert ab.p_value == pytest.approx(ba.p_value)
    assert ab.t == pytest.approx(-ba.t)


def test_welch_is_not_applicable_with_fewer_than_two_seeds():
    for a, b in (([0.5], [0.1, 0.2]), ([0.1, 0.2], [0.5]), ([], [1.0, 2.0])):
        result = welch_t_test(a, b)
        assert result.p_value is None and result.reason == FEWER_THAN_TWO
    assert format_p(welch_t_test([0.5], [0.1, 0.2])) == "n/a (fewer than 2 seeds)"


def test_welch_is_not_applicable_when_both_samples_are_constant():
    for b in ([0.5, 0.5], [0.7, 0.7, 0.7]):
        result = welch_t_test([0.5, 0.5, 0.5], b)
        assert result.p_value is None and result.reason == ZERO_VARIANCE
    assert format_p(welch_t_test([1.0, 1.0], [2.0, 2.0])) == "n/a (zero variance)"


# scipy warns about the constant sample's variance, which it computes as a tiny rounding error.
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_welch_works_when_only_one_sample_is_constant():
    a, b = [0.5, 0.5, 0.5], [0.6, 0.7, 0.8]
    reference = stats.ttest_ind(a, b, equal_var=False)
    result = welch_t_test(a, b)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.df == pytest.approx(2.0)  # all the variance comes from b: n_b - 1


def test_welch_reports_non_finite_values_instead_of_a_p_value():
    result = welch_t_test([0.5, float("nan")], [0.1, 0.2])
    assert result.p_value is None and result.reason == NON_FINITE


def test_welch_rejects_nested_sequences():
    with pytest.raises(ValueError, match="1-D"):
        welch_t_test([[1.0, 2.0]], [1.0, 2.0])


def test_summary_uses_the_sample_standard_deviation_ddof_1():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s == Summary(mean=2.5, std=pytest.approx(math.sqrt(5 / 3)), n=4)
    # ddof=0 would give sqrt(1.25) = 1.118; the reports promise ddof=1.
    assert s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_summary_of_one_value_has_no_standard_deviation():
    s = summarize([0.9])
    assert s.mean == 0.9 and s.n == 1 and math.isnan(s.std)
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])


def test_format_summary_shows_mean_std_and_number_of_seeds():
    assert format_summary(summarize([0.898, 0.902]), 3) == "0.900 ± 0.003 (2)"
    assert format_summary(summarize([0.5, 0.6]), 2, factor=100) == "55.00 ± 7.07 (2)"
    assert format_summary(summarize([0.9]), 3) == "0.900 (1)"
    assert format_summary(None, 3) == "—"


def test_format_p_uses_four_decimals_and_scientific_notation_below_1e_4():
    assert format_p(welch_t_test([0.0, 2.0], [3.0, 5.0])) == "0.1679"
    tiny = welch_t_test([0.0, 0.001, 0.002], [10.0, 10.001, 10.002])
    assert tiny.p_value < 1e-4
    assert "e-" in format_p(tiny)
    assert format_p(None) == "—"


@pytest.mark.parametrize(
    ("n", "shift", "noise"), [(5, 0.3, 0.2), (2, 0.0, 1.0), (3, -1.0, 0.5), (10, 0.05, 0.1)]
)
def test_paired_matches_scipy_ttest_rel(n, shift, noise):
    rng = np.random.default_rng(n * 10 + 1)
    a = rng.normal(0.0, 1.0, n)
    b = a + rng.normal(shift, noise, n)  # b depends on a: the pairing matters
    ours = paired_t_test(a, b)
    reference = stats.ttest_rel(a, b)
    assert ours.reason is None and ours.n == n and ours.df == n - 1
    assert ours.t == pytest.approx(reference.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(reference.pvalue, rel=1e-9)


def test_paired_hand_computed_case_and_pairing_beats_welch_for_correlated_seeds():
    # d = a - b = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt(3)) = 2 sqrt(3), df 2; with 2 df
    # P(T <= -|t|) = 1/2 - |t| / (2 sqrt(2 + t^2)), so p = 1 - sqrt(12 / 14).
    result = paired_t_test([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert result.t == pytest.approx(2 * math.sqrt(3), rel=1e-12)
    assert result.p_value == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-10)
    # A seed effect shared by both methods hides the difference from Welch, not from the pairs.
    a, b = [0.50, 0.70, 0.90, 0.60], [0.48, 0.67, 0.88, 0.57]
    assert paired_t_test(a, b).p_value < 0.01 < welch_t_test(a, b).p_value
    assert paired_t_test(b, a).p_value == pytest.approx(paired_t_test(a, b).p_value)


def test_paired_edge_cases_give_a_reason_instead_of_a_p_value():
    assert paired_t_test([0.5], [0.4]).reason == FEWER_THAN_TWO
    assert paired_t_test([0.5, 0.7], [0.4, 0.6]).reason == ZERO_VARIANCE  # constant differences
    assert paired_t_test([0.5, 0.5], [0.5, 0.5]).reason == ZERO_VARIANCE
    assert paired_t_test([0.5, float("inf")], [0.4, 0.6]).reason == NON_FINITE
    assert format_p(paired_t_test([0.5], [0.4])) == "n/a (fewer than 2 seeds)"
    with pytest.raises(ValueError, match="one pair each"):
        paired_t_test([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        paired_t_test([[1.0, 2.0]], [1.0, 2.0])
