"""How sure a KD gain is: a paired test for one run, a t-interval across seeds.

The distilled student and its baseline are scored on the same test images, so
one run's gain is a paired comparison: McNemar's exact test on the images that
exactly one of the two gets right, and a paired bootstrap interval for the
difference in accuracy. Across seeds, the gains are independent draws: mean,
standard deviation and a Student-t interval.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import stats as _scipy

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so a stored run's interval can be recomputed exactly
SIGNIFICANCE = 0.05


@dataclass
class PairedGain:
    """Model A (the distilled student) against model B (the baseline) on the same images."""

    gain: float  # accuracy of A minus accuracy of B, a fraction
    ci95: tuple[float, float]  # paired bootstrap percentile interval of the gain, fractions
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
    return float(_scipy.binomtest(only_a_right, discordant, 0.5).pvalue)


def paired_bootstrap_ci(only_a_right: int, only_b_right: int, n: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the accuracy difference, resampling test images with replacement.

    Each image contributes +1, -1 or 0 to the difference, so a resample of n images is
    one multinomial draw of how many of each it holds: the same distribution as
    resampling indices, at a cost independent of n.
    """
    if n <= 0:
        return (math.nan, math.nan)
    rest = n - only_a_right - only_b_right
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [only_a_right / n, only_b_right / n, rest / n], size=resamples)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return (float(low), float(high))


def paired_gain(a_correct: Sequence[bool], b_correct: Sequence[bool], **bootstrap) -> PairedGain:
    """Compares two models' per-image correctness on the same test images."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired predictions need two equal 1-D arrays, got {a.shape} and {b.shape}")
    n = int(a.size)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    gain = (only_a - only_b) / n if n else math.nan
    return PairedGain(gain=gain, ci95=paired_bootstrap_ci(only_a, only_b, n, **bootstrap),
                      p_value=mcnemar_exact(only_a, only_b), test_images=n, only_a_right=only_a,
                      only_b_right=only_b)


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
    half = float(_scipy.t.ppf(0.5 + level / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return SeedSpread(mean=mean, std=std, n=int(x.size), ci95=[mean - half, mean + half])


def signed_points(fraction: float) -> str:
    """A fraction in signed percentage points with a true minus sign: -0.0334 -> '−3.34'."""
    return f"{100 * fraction:+.2f}".replace("-", "−")


def _p(p: float) -> str:
    return f"= {p:.2g}" if p >= 0.001 else "< 0.001"


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
    low, high = ci95 if ci95 else (math.nan, math.nan)
    if p_value < SIGNIFICANCE and (low > 0 or high < 0):
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
