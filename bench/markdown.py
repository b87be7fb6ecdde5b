"""Writing a benchmark's block into a Markdown file between its markers, leaving the rest as it is."""
from __future__ import annotations

from pathlib import Path


def old_block(text: str, begin: str, end: str) -> list[str]:
    """The lines now between the markers; [] when the file has no block yet."""
    if begin in text and end in text:
        return text[text.index(begin) + len(begin):text.index(end)].splitlines()
    return []


def put_block(path: Path, begin: str, end: str, body: str) -> None:
    """Replaces what lies between the markers with `body`, or appends the markers and body at the end."""
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
