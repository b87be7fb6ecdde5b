"""How sure a KD gain is: a paired test for one run, a t-interval across seeds of one setting.

The distilled student and its baseline are scored on the same test images, so
one run's gain is a paired comparison: McNemar's exact test on the images that
exactly one of the two gets right, and the exact interval that inverts the same
test, so the interval excludes zero exactly when p < 0.05 (a bootstrap interval
and the exact test disagreed at the edge, and a run read as both real and chance).
Across seeds of one setting, the gains are independent draws: mean, standard
deviation and a Student-t interval. Different settings (a sweep's cells) are never
pooled: their spread is not noise.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

SIGNIFICANCE = 0.05


def _scipy():
    # Imported on first use: scipy.stats takes about a second, which `kdcore submit` need not pay.
    from scipy import stats

    return stats


@dataclass
class PairedGain:
    """Model A (the distilled student) against model B (the baseline) on the same images."""

    gain: float  # accuracy of A minus accuracy of B, a fraction
    ci95: tuple[float, float]  # exact interval of the gain (paired_exact_ci), fractions
    p_value: float  # McNemar's exact two-sided test
    test_images: int
    only_a_right: int  # images A gets right and B wrong
    only_b_right: int  # images B gets right and A wrong

    @property
    def net_images(self) -> int:
        return self.only_a_right - self.only_b_right

    @property
    def real(self) -> bool:
        """Significant at 5% and an interval that excludes zero."""
        low, high = self.ci95
        return self.p_value < SIGNIFICANCE and (low > 0 or high < 0)

    def as_summary(self) -> dict:
        """The keys a run's summary stores."""
        return {"kd_gain": self.gain, "kd_gain_ci95": list(self.ci95), "kd_gain_p_value": self.p_value,
                "test_images": self.test_images,
                "kd_gain_discordant": {"student_only": self.only_a_right, "baseline_only": self.only_b_right}}


def mcnemar_exact(only_a_right: int, only_b_right: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against 1/2."""
    discordant = only_a_right + only_b_right
    if discordant == 0:
        return 1.0
    return float(_scipy().binomtest(only_a_right, discordant, 0.5).pvalue)


def paired_exact_ci(only_a_right: int, only_b_right: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact interval of the accuracy difference, given the discordant images: the Clopper-Pearson interval of
    the share of them that model A gets right, p, mapped to the difference (2p - 1) * discordant / n.

    It inverts the binomial test that mcnemar_exact runs (two-sided against 1/2, symmetric, so the central and
    the likelihood-ordered p-values agree): the interval excludes zero exactly when p < 1 - level.
    """
    if n <= 0:
        return (math.nan, math.nan)
    discordant = only_a_right + only_b_right
    if discordant == 0:
        return (0.0, 0.0)
    share = _scipy().binomtest(only_a_right, discordant, 0.5).proportion_ci(confidence_level=level, method="exact")
    scale = discordant / n
    return (float(scale * (2 * share.low - 1)), float(scale * (2 * share.high - 1)))


def paired_gain(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> PairedGain:
    """Compares two models' per-image correctness on the same test images."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired predictions need two equal 1-D arrays, got {a.shape} and {b.shape}")
    n = int(a.size)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    gain = (only_a - only_b) / n if n else math.nan
    return PairedGain(gain=gain, ci95=paired_exact_ci(only_a, only_b, n),
                      p_value=mcnemar_exact(only_a, only_b), test_images=n, only_a_right=only_a,
                      only_b_right=only_b)


CHANCE_SKILL = 0.05  # a share of the way from chance to a perfect score; below it a model has little to teach


def at_chance(accuracy: float, classes: int, n: Optional[int] = None) -> bool:
    """Whether an accuracy on n test images is within noise of guessing among `classes` classes.

    True when it is not above 1/classes by a one-sided exact binomial test at 5%, or when it lies less than
    CHANCE_SKILL of the way from chance to 100% (10.58% on 10 classes: above chance by the test on 10,000
    images, yet 0.6% of the way to perfect).
    """
    chance = 1.0 / classes
    if (accuracy - chance) / (1.0 - chance) < CHANCE_SKILL:
        return True
    if n:
        right = round(accuracy * n)
        return _scipy().binomtest(right, n, chance, alternative="greater").pvalue >= SIGNIFICANCE
    return False


def no_better(accuracy: float, than: float, n: Optional[int] = None) -> bool:
    """Whether `accuracy` is not above `than` by more than noise on n test images: the difference is under 1.96
    unpaired standard errors (without n, not above it at all)."""
    if not n:
        return accuracy <= than
    se = math.sqrt((accuracy * (1 - accuracy) + than * (1 - than)) / n)
    return accuracy - than <= _scipy().norm.ppf(1 - SIGNIFICANCE / 2) * se


@dataclass
class SeedSpread:
    """One quantity over n independent seeds."""

    mean: float
    std: Optional[float]  # sample standard deviation; None for one seed
    n: int
    ci95: Optional[list[float]]  # Student-t interval of the mean; None for one seed

    def as_dict(self) -> dict:
        return asdict(self)


def across_seeds(values: Iterable[Optional[float]], level: float = 0.95) -> Optional[SeedSpread]:
    """Mean, standard deviation and t-interval of the finite values; None if there are none."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return None
    mean = float(x.mean())
    if x.size == 1:
        return SeedSpread(mean=mean, std=None, n=1, ci95=None)
    std = float(x.std(ddof=1))
    half = float(_scipy().t.ppf(0.5 + level / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return SeedSpread(mean=mean, std=std, n=int(x.size), ci95=[mean - half, mean + half])


def signed_points(fraction: float) -> str:
    """A fraction in signed percentage points with a true minus sign: -0.0334 -> '−3.34'."""
    return f"{100 * fraction:+.2f}".replace("-", "−")


def _p(p: float) -> str:
    if p < 0.001:
        return "< 0.001"
    if 0.045 <= p < 0.055:  # two digits would print 0.0496 and 0.0504 alike as 0.05, on either side of the line
        return f"= {p:.3g}"
    return f"= {p:.2g}"


def describe_paired(gain: Optional[float], ci95: Optional[Sequence[float]], p_value: Optional[float],
                    test_images: Optional[int] = None, net_images: Optional[int] = None) -> str:
    """One run's gain in words: the interval, how many images, and whether it is more than chance."""
    if gain is None or not math.isfinite(gain):
        return "no KD gain (no baseline was trained)"
    words = f"{signed_points(gain)} points"
    details = []
    if ci95 and all(v is not None and math.isfinite(v) for v in ci95):
        details.append(f"95% interval {signed_points(ci95[0])} to {signed_points(ci95[1])}")
    if test_images:
        net = net_images if net_images is not None else round(gain * test_images)
        details.append(f"net {net:+d} of {test_images:,} test images".replace("-", "−"))
    if details:
        words += f" ({'; '.join(details)})"
    if p_value is None or not math.isfinite(p_value):
        return words
    has_interval = bool(ci95) and all(v is not None and math.isfinite(v) for v in ci95)
    significant = p_value < SIGNIFICANCE
    if has_interval and significant != (ci95[0] > 0 or ci95[1] < 0):
        # only a run stored with another kind of interval (and no discordant counts to recompute it) gets here
        return (f"{words}: borderline, too close to call: the interval and the exact test (p {_p(p_value)}) fall "
                "on opposite sides of the 5% line; treat it as not shown")
    if significant:
        verdict = "real" if gain > 0 else "real, and the student is worse"
        return f"{words}: {verdict} at p {_p(p_value)}"
    return f"{words}: not distinguishable from chance (p {_p(p_value)})"


def describe_spread(spread: Optional[dict | SeedSpread]) -> str:
    """A gain over seeds in words: mean ± std, the t-interval, and whether it excludes zero."""
    if spread is None:
        return "no completed seeds yet"
    s = spread.as_dict() if isinstance(spread, SeedSpread) else spread
    if s["n"] < 2:
        return f"{signed_points(s['mean'])} points from one seed: add seeds for an interval"
    low, high = s["ci95"]
    words = (f"{signed_points(s['mean'])} ± {100 * s['std']:.2f} points over {s['n']} seeds "
             f"(95% interval {signed_points(low)} to {signed_points(high)})")
    if low > 0:
        return f"{words}: above zero"
    if high < 0:
        return f"{words}: below zero, the student is worse"
    return f"{words}: the interval includes zero, not distinguishable from no gain"
