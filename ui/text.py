"""Numbers and messages in words, the same way on every page."""
from __future__ import annotations

import math
from typing import Optional

STATUS_ICONS = {"queued": "⏳", "running": "▶️", "completed": "✅", "failed": "❌", "cancelled": "⏹️",
                "interrupted": "⚠️"}


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value: Optional[float], digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage."""
    return "—" if missing(value) else f"{100 * value:.{digits}f}%"


def points(value: Optional[float]) -> str:
    """A difference of two accuracies (fractions) in percentage points, signed."""
    return "—" if missing(value) else f"{100 * value:+.2f} pts"


def points_range(low: Optional[float], high: Optional[float]) -> str:
    """An interval of accuracy differences in points: '−0.28 to +3.06'."""
    if missing(low) or missing(high):
        return "—"
    return f"{100 * low:+.2f} to {100 * high:+.2f}".replace("-", "−")


def p_value(p: Optional[float]) -> str:
    if missing(p):
        return "—"
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def compact(value: Optional[float], unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    if missing(value):
        return "—"
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def ratio(big: Optional[float], small: Optional[float]) -> str:
    if missing(big) or missing(small) or not small:
        return "—"
    return f"{big / small:.1f}×"


def duration(seconds: Optional[float]) -> str:
    if missing(seconds):
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def headline(error: Optional[str]) -> str:
    """The stored error's message in words, without its traceback."""
    return (error or "").split("\n\n", 1)[0].strip()


def traceback_of(error: Optional[str]) -> str:
    parts = (error or "").split("\n\n", 1)
    return parts[1].strip() if len(parts) == 2 else ""


def run_label(run_id: int, name: str, status: str) -> str:
    return f"#{run_id} {STATUS_ICONS.get(status, '')} {name}"
