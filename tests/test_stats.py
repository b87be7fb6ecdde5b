"""The uncertainty behind every KD gain, checked against hand computations."""
import math

import numpy as np
import pytest

from kdcore.config import ConfigError
from kdcore.experiments import format_seeds, parse_seeds
from scipy import stats as scipy_stats

from kdcore.stats import across_seeds, describe_paired, describe_spread, mcnemar_exact, paired_exact_ci, paired_gain


def _pairs(only_a: int, only_b: int, both: int, neither: int):
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return np.array(a, bool), np.array(b, bool)


def test_mcnemar_exact_matches_the_binomial_sum_by_hand():
    # 6 images only the student gets right, 1 only the baseline: p = 2 * (C(7,0) + C(7,1)) / 2^7
    assert mcnemar_exact(6, 1) == pytest.approx(2 * (1 + 7) / 2 ** 7)
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2 ** 10)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0


def test_paired_gain_counts_the_discordant_images_and_its_interval_contains_the_gain():
    a, b = _pairs(only_a=30, only_b=10, both=300, neither=60)
    g = paired_gain(a, b)
    assert (g.only_a_right, g.only_b_right, g.test_images, g.net_images) == (30, 10, 400, 20)
    assert g.gain == pytest.approx(20 / 400)
    assert g.ci95[0] < g.gain < g.ci95[1]
    # by hand: Clopper-Pearson for the 30 of 40 discordant images the student gets right, from beta quantiles,
    # mapped to the difference (2p - 1) * 40 / 400
    share_low, share_high = scipy_stats.beta.ppf(0.025, 30, 11), scipy_stats.beta.ppf(0.975, 31, 10)
    assert g.ci95 == pytest.approx(((2 * share_low - 1) / 10, (2 * share_high - 1) / 10))
    assert g.p_value == pytest.approx(mcnemar_exact(30, 10))
    assert g.real


def test_no_discordant_images_means_no_gain_and_no_evidence():
    a, b = _pairs(only_a=0, only_b=0, both=50, neither=3)
    g = paired_gain(a, b)
    assert g.gain == 0 and g.ci95 == (0.0, 0.0) and g.p_value == 1.0 and not g.real
    assert all(math.isnan(v) for v in paired_exact_ci(0, 0, 0))  # no images, no interval


def test_unequal_prediction_arrays_are_refused():
    with pytest.raises(ValueError, match="equal 1-D"):
        paired_gain([True, False], [True])


def test_across_seeds_is_a_student_t_interval_by_hand():
    s = across_seeds([0.01, 0.02, 0.03, 0.04])
    std = math.sqrt(((0.015) ** 2 + (0.005) ** 2) * 2 / 3)
    half = 3.182446 * std / 2  # t(0.975, df=3) = 3.182446
    assert (s.mean, s.n) == (pytest.approx(0.025), 4)
    assert s.std == pytest.approx(std)
    assert s.ci95 == pytest.approx([0.025 - half, 0.025 + half], abs=1e-6)
    one = across_seeds([0.01, None, float("nan")])
    assert one.n == 1 and one.std is None and one.ci95 is None
    assert across_seeds([]) is None


def test_gains_in_words():
    assert describe_paired(0.0139, [-0.0028, 0.0306], 0.125, 359, 5) == (
        "+1.39 points (95% interval −0.28 to +3.06; net +5 of 359 test images): "
        "not distinguishable from chance (p = 0.12)")
    assert describe_paired(0.05, [0.02, 0.08], 0.0031, 400, 20).endswith("real at p = 0.0031")
    assert "the student is worse" in describe_paired(-0.05, [-0.08, -0.02], 0.003, 400, -20)
    assert "above zero" in describe_spread(across_seeds([0.01, 0.02, 0.015]))
    assert "includes zero" in describe_spread(across_seeds([0.01, -0.02, 0.015]))
    assert "one seed" in describe_spread(across_seeds([0.01]))


@pytest.mark.parametrize("text, seeds", [("0,1,2", [0, 1, 2]), ("0-4", [0, 1, 2, 3, 4]), ("3, 1-2, 3", [1, 2, 3]),
                                         ("7", [7])])
def test_seed_lists_and_ranges(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, message", [("4-0", "runs backwards"), ("0-x", "'0-x' is not a seed"),
                                           ("", "at least one seed"), ("-1", "is not a seed"),
                                           ("0-500", "at most 100")])
def test_bad_seed_lists_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_seeds(text)


def test_seed_lists_are_written_back_compactly():
    assert format_seeds([0, 1, 2, 3, 7, 9, 10]) == "0-3,7,9,10"
