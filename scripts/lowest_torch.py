"""Prints pip requirements for the lowest torch and torchvision that pyproject.toml allows.

`make test` builds .venv-torch-lowest from them, so the suite can check kdcore on both ends
of the range it promises: `torch>=2.11.0` becomes `torch==2.11.0`.
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PINNED = ("torch", "torchvision")


def lowest_pins(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for name in PINNED:
        spec = next((d for d in deps if re.match(rf"{name}\s*[><=!~]", d)), None)
        low = re.search(r">=\s*([0-9][0-9.]*)", spec or "")
        if low is None:
            raise SystemExit(f"pyproject.toml: {name} has no lower bound (>=X.Y.Z) to test")
        pins.append(f"{name}=={low.group(1)}")
    return pins


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print(" ".join(lowest_pins(root / "pyproject.toml")))
