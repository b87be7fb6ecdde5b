"""Text a person hands kdcore is refused by its size or its alias expansion before parsing work grows with it.

The memory and CPU figures are taken in a fresh interpreter, so the peak belongs to the one refusal alone.
CPU time, not wall time, is what is bounded: a busy machine stretches the wall clock, not the work.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdcore.config import ConfigError  # noqa: E402
from kdcore.configure import load_config  # noqa: E402
from kdcore.inputs import InputRefused, load_yaml  # noqa: E402

DIGITS = ROOT / "examples" / "digits.yaml"


def alias_bomb(levels: int = 7) -> str:
    """Each level repeats the one before ten times: 10**levels values from a few hundred characters."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "{" + ", ".join(lines) + "}"


def bomb_config(tmp_path: Path) -> Path:
    path = tmp_path / "bomb.yaml"
    config = yaml.safe_load(DIGITS.read_text())
    body = yaml.safe_dump(config, sort_keys=False).replace("student:\n", f"student:\n  options: {alias_bomb()}\n", 1)
    path.write_text(body)
    assert len(alias_bomb()) < 600 and path.stat().st_size < 1024  # the size of the reported one
    return path


MEASURE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
scope = {}
exec(sys.argv[2], scope)
before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cpu = time.process_time()
try:
    exec(sys.argv[3], scope)
    outcome = "accepted"
except Exception as err:
    outcome = f"{type(err).__name__}: {err}"
print(json.dumps({"outcome": outcome, "cpu_s": time.process_time() - cpu,
                  "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024}))
"""


def measure(setup: str, action: str, env: dict | None = None) -> dict:
    """Runs `setup`, then `action` in a fresh interpreter: the action's outcome, CPU seconds and peak growth."""
    result = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), setup, action], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_alias_bomb_is_refused_by_the_cli_in_one_line_before_anything_is_stored(tmp_path):
    path = bomb_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "kdcore", "--db", f"sqlite:///{tmp_path}/store/kd.db", "train",
                             str(path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 2, result.stderr
    assert "expands to more than 20,000 values" in result.stderr and "KDCORE_MAX_YAML_NODES" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


def test_loading_the_alias_bomb_takes_under_a_second_and_100_mb(tmp_path):
    path = bomb_config(tmp_path)
    figures = measure("from kdcore.configure import load_config", f"load_config({str(path)!r})")
    assert figures["outcome"].startswith("ConfigError") and "KDCORE_MAX_YAML_NODES" in figures["outcome"]
    assert figures["cpu_s"] < 1.0 and figures["grew_mb"] < 100, figures


def test_the_alias_bomb_typed_in_the_forms_options_is_refused_in_under_a_second_and_100_mb(tmp_path):
    setup = ("from tests.helpers import errors, new_experiment_with\n"
             "from kdcore.store import Store\n"
             "at = new_experiment_with(**{'f.student.arch': 'mlp'})\n")
    action = textwrap.dedent(f"""
        at.session_state["f.student.options"] = {alias_bomb()!r}
        at.run()
        shown = errors(at)
        assert "student.options" in shown and "expands to more than 20,000 values" in shown, shown
        assert at.button(key="ui.launch").disabled and not at.exception
        assert Store().count_runs() == 0
        raise RuntimeError("refused")
    """)
    figures = measure(setup, action, env={"KDCORE_DB_URL": f"sqlite:///{tmp_path}/store/kd.db"})
    assert figures["outcome"] == "RuntimeError: refused", figures
    assert figures["cpu_s"] < 1.0 and figures["grew_mb"] < 100, figures


def test_a_config_file_over_the_size_limit_is_refused_without_being_read(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("w") as handle:
        handle.write("student:\n  options:\n    notes: [")
        handle.write("1, " * 1_000_000)  # 3 MB
        handle.write("1]\n")
    with pytest.raises(ConfigError, match=r"big.yaml is 2,930 KB, more than the limit of 1,024 KB \(KDCORE_MAX_CONFIG_KB\)"):
        load_config(big)
    figures = measure("from kdcore.configure import load_config", f"load_config({str(big)!r})")
    assert figures["cpu_s"] < 1.0 and figures["grew_mb"] < 100, figures


def test_a_long_option_value_and_a_self_referring_or_deep_document_are_refused():
    with pytest.raises(InputRefused, match="more than the limit of 20,000 .*KDCORE_MAX_OPTIONS_CHARS"):
        load_yaml("x" * 20_001, "the options")
    with pytest.raises(InputRefused, match="refers to itself"):
        load_yaml("&a [*a]", "the options")
    with pytest.raises(InputRefused, match="nested more than 100 levels deep|nested too deeply"):
        load_yaml("[" * 150 + "]" * 150, "the options")
    with pytest.raises(ConfigError, match="the value of student.options.hidden expands to more than"):
        load_config(DIGITS, [f"student.options.hidden={alias_bomb(6)}"])


def test_the_limits_can_be_raised_and_ordinary_aliases_still_work(monkeypatch):
    assert load_yaml("base: &b {width: 16}\nother: *b") == {"base": {"width": 16}, "other": {"width": 16}}
    monkeypatch.setenv("KDCORE_MAX_YAML_NODES", "2000000")
    assert len(load_yaml(alias_bomb(5))["a4"]) == 10
    monkeypatch.setenv("KDCORE_MAX_YAML_NODES", "many")
    with pytest.raises(InputRefused, match="KDCORE_MAX_YAML_NODES='many' is not a whole number"):
        load_yaml("a: 1")
