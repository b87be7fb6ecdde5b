"""Numbers and messages in words, the same way on every page."""
from __future__ import annotations

import math
import re
from typing import Optional

# Material icons, which Streamlit bundles and draws in Markdown: emoji drew as empty boxes where the browser has
# no emoji font. Widget options (select boxes) show no Markdown: run_label writes the status in words.
STATUS_ICONS = {"queued": ":material/hourglass_top:", "running": ":material/play_circle:",
                "completed": ":material/check_circle:", "failed": ":material/error:",
                "cancelled": ":material/stop_circle:", "interrupted": ":material/warning:"}


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value: Optional[float], digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage."""
    return "—" if missing(value) else f"{100 * value:.{digits}f}%"


MINUS = "\u2212"  # every signed number is written with the minus sign "−", never the hyphen "-"


def signed(value: Optional[float], digits: int = 2) -> str:
    """A number with its sign, '+3.06' or '−0.28'; '—' when missing."""
    return "—" if missing(value) else f"{value:+.{digits}f}".replace("-", MINUS)


def points(value: Optional[float]) -> str:
    """A difference of two accuracies (fractions) in percentage points, signed: '−4.46 pts'."""
    return "—" if missing(value) else f"{signed(100 * value)} pts"


def points_range(low: Optional[float], high: Optional[float]) -> str:
    """An interval of accuracy differences in points: '−0.28 to +3.06'."""
    if missing(low) or missing(high):
        return "—"
    return f"{signed(100 * low)} to {signed(100 * high)}"


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
    times = big / small
    return f"{times:.0f}×" if times >= 100 else f"{times:.1f}×"  # 160×, not 159.6×: a narrow tile fits it


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
    """A run in a select box: '#12 digits demo · completed'."""
    return f"#{run_id} {name} · {status}"


def number(value) -> str:
    """A config value as a reader writes it: 8.0 -> '8', 0.0833333 -> '0.0833', True -> 'on'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def method_line(config: dict, method: str) -> str:
    """The run's method with its options: 'dkd (tckd_weight 1, nckd_weight 8, warmup 0.0833)'."""
    options = ((config or {}).get("distill") or {}).get("options") or {}
    if not isinstance(options, dict) or not options:
        return method
    return f"{method} ({', '.join(f'{k} {number(v)}' for k, v in options.items())})"


def teachers_line(config: dict, first_arch: str) -> str:
    """The run's teacher architectures, 'resnet20' or 'resnet20 + vgg8 (2 teachers)'; fine-tuned ones marked."""
    teachers = [t for t in (config or {}).get("teachers") or [] if isinstance(t, dict)]
    if not teachers:
        teacher = (config or {}).get("teacher")
        teachers = [teacher] if isinstance(teacher, dict) else [{"arch": first_arch}]
    names = [f"{t.get('arch', '?')}" + (" fine-tuned" if t.get("finetune_epochs") else "") for t in teachers]
    return " + ".join(names) + (f" ({len(names)} teachers)" if len(names) > 1 else "")


_TERM = re.compile(r"\\mathcal\{L\}_\{(\w+)\}\s*=")
_T_SQUARED = re.compile(r"(?<![\\A-Za-z])T\^(?:2|\{2\})")
_T = re.compile(r"(?<![\\A-Za-z])T(?![A-Za-z])")


def formula_terms(formula: str) -> list[str]:
    """The terms a method's LaTeX formula defines, from its `\\mathcal{L}_{name} =` parts: ['tckd', 'nckd']."""
    return _TERM.findall(formula)


def at_temperature(latex: str, temperature: float) -> str:
    """LaTeX with the symbol T replaced by its value (T² by its square); commands like \\Theta stay."""
    latex = _T_SQUARED.sub(f"{temperature * temperature:g}", latex)
    return _T.sub(f"{temperature:g}", latex)


_ADJACENT_NUMBERS = re.compile(r"(\d)\s*\\,\s*(\d)")  # "8\,16" once λ and T² have their values: 8·16


def with_options(latex: str, options: dict, symbols: dict[str, str]) -> str:
    """LaTeX with each option's symbol (`\\lambda_{nc}` for nckd_weight) replaced by its value, rounded as a
    reader writes it (0.0833, not 0.08333333333333333)."""
    for name, symbol in symbols.items():
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown = str(int(value)) if float(value).is_integer() and abs(value) < 1e7 else f"{value:.3g}"
            latex = latex.replace(symbol, shown)
    return latex


def wrapped(latex: str, title: str = "") -> str:
    """A formula of several parts joined by `,\\quad` as one part per row (after its title's), so it never runs
    off the page."""
    rows = re.split(r",\s*\\quad\s*", latex)
    if len(rows) == 1:
        return rf"{title}\quad {latex}" if title else latex
    rows = [r",\\ ".join(rows)]
    return r"\begin{gathered}" + (rf"{title}\\ " if title else "") + rows[0] + r"\end{gathered}"


def loss_latex(method: str, formula: str, temperature: float, alpha: float, uses_temperature: bool,
               options: Optional[dict] = None, symbols: Optional[dict[str, str]] = None) -> list[str]:
    """The loss of a run as LaTeX lines: (1-α)·CE + α·(the method's terms), symbolic and with α's value; the
    method's own formula; and that formula with this T and the method's options (`symbols` maps an option to
    its symbol in the formula), each part on its own row."""
    terms = formula_terms(formula)
    name = method.replace("_", r"\_")
    symbol = " + ".join(rf"\mathcal{{L}}_{{{t}}}" for t in terms) or rf"\mathcal{{L}}_{{\mathrm{{{name}}}}}"
    grouped = rf"\big({symbol}\big)" if len(terms) > 1 else symbol
    ce = r"\mathrm{CE}\big(y,\ \sigma(z_s)\big)"
    lines = [rf"\begin{{aligned}}\mathcal{{L}} &= (1-\alpha)\,{ce} + \alpha\,{grouped}\\"
             rf"&= {1 - alpha:.2f}\,{ce} + {alpha:.2f}\,{grouped}\end{{aligned}}"]
    own = formula if terms else rf"\mathcal{{L}}_{{\mathrm{{{name}}}}} = {formula}"
    lines.append(wrapped(own))
    valued = with_options(at_temperature(own, temperature) if uses_temperature else own, options or {}, symbols or {})
    if valued != own:
        valued = _ADJACENT_NUMBERS.sub(r"\1\\cdot \2", valued)
        where = rf"\text{{at }} T = {temperature:g}" if uses_temperature else r"\text{with these options}"
        lines.append(wrapped(valued, f"{where}:"))
    return lines


# FLOPs against MACs: the same count in two conventions, so every place that shows one says which
FLOPS_LABEL = "FLOPs (2 × MACs)"
MACS_LABEL = "MACs"
FLOPS_HELP = ("FLOPs here count a multiply-add as 2 FLOPs (so FLOPs = 2 × MACs); papers, thop and ptflops "
              "report MACs (multiply-adds), half this number")


def macs_of(summary: dict, phase: str) -> Optional[float]:
    """A phase's multiply-adds per image: the summary's `<phase>_macs`, else its `<phase>_flops` / 2; None if
    neither is known."""
    summary = summary or {}
    macs = summary.get(f"{phase}_macs")
    if not missing(macs):
        return macs
    flops = summary.get(f"{phase}_flops")
    return None if missing(flops) else flops / 2


def ms(value: Optional[float]) -> str:
    """A latency in milliseconds: 0.0123 -> '0.012 ms', 12.3 -> '12.3 ms'."""
    return "—" if missing(value) else f"{value:.3g} ms"


def own_settings(summary: dict, phase: str) -> Optional[str]:
    """A teacher's training settings of its own, in words ('lr 0.0005; crop padding 2 px, flip'); None if it
    trained as the students did."""
    parts = []
    train = summary.get(f"{phase}_train") or {}
    if train:
        parts.append(", ".join(f"{k.replace('_', ' ')} {number(v)}" for k, v in train.items()))
    augment = summary.get(f"{phase}_augment")
    if isinstance(augment, dict):
        shown = [f"crop padding {augment['crop_padding']} px" if augment.get("crop_padding") else "",
                 "flip" if augment.get("flip") else "",
                 f"rotation up to {number(augment['rotation'])}°" if augment.get("rotation") else ""]
        parts.append(", ".join(p for p in shown if p) or "no augmentation")
    return "; ".join(parts) or None


def teachers_cell(summary: Optional[dict], first_arch: Optional[str] = None) -> Optional[str]:
    """A run's teachers with their test accuracies, for the runs table: 'resnet18 94.1% + wrn_16_2 93.0%'; None
    when the summary names no teacher."""
    from kdcore.record.summary import RunSummary

    teachers = RunSummary.from_stored(summary if isinstance(summary, dict) else {}).teachers(first_arch)
    cells = [" ".join(part for part in (t.arch, pct(t.test_acc) if not missing(t.test_acc) else "") if part)
             for t in teachers]
    return " + ".join(c for c in cells if c) or None


_CELL_FORMATS = {"pct": lambda v: pct(v), "pts": lambda v: signed(100 * v), "p": lambda v: p_value(v),
                 "number": lambda v: number(v), "count": lambda v: compact(v), "ms": lambda v: ms(v),
                 "duration": lambda v: duration(v)}  # looked up when called: the formatters are defined below too


def table_cell(value, kind: str) -> str:
    """One cell of a runs table as text, the same way in every column of a kind: 'pct' (a fraction as '97.5%'),
    'pts' (a signed difference in points, '−4.46'), 'p', 'number' ('%.3g'), 'count' ('1.23 M'), 'ms', 'duration',
    'int', or 'text'; '—' for a missing value, never 'None' or 'nan'."""
    if missing(value) or value is None or (kind == "text" and str(value) in ("", "nan", "None", "<NA>")):
        return "—"
    try:
        if kind in _CELL_FORMATS:
            return _CELL_FORMATS[kind](float(value))
        if kind == "int":
            return str(int(value))
    except (TypeError, ValueError):
        return "—"
    return str(value)
