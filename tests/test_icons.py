"""Icons a browser without an emoji font and without the internet still draws: Material icons (bundled with
Streamlit) or words for run statuses, and a page icon served by the dashboard itself (a ":material/…:" page icon
is fetched from fonts.gstatic.com; status emoji drew as empty boxes)."""
import re
from pathlib import Path

import pytest

from kdcore import text

ROOT = Path(__file__).resolve().parents[1]
# pictographs and symbols that browsers draw from an emoji font, and the variation selector that asks for one
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u26FF\u2705\u274C\u274E\u2753-\u2757\u23E9-\u23FA\u2B50\u2B55\uFE0F]")


def test_status_icons_are_material_icons_and_run_labels_words():
    assert all(re.fullmatch(r":material/[a-z_]+:", icon) for icon in text.STATUS_ICONS.values())
    assert text.run_label(12, "digits demo", "completed") == "#12 digits demo · completed"


def test_no_page_or_part_writes_an_emoji():
    found = []
    sources = [ROOT / "app.py", ROOT / "kdcore" / "text.py", *(ROOT / "pages").glob("*.py"), *(ROOT / "ui").glob("*.py")]
    for path in sources:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if EMOJI.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not found, "\n".join(found)


@pytest.mark.browser
def test_the_page_icon_is_served_by_the_dashboard_itself(tmp_path, page):
    from ui.serve import serve_dashboard

    with serve_dashboard(f"sqlite:///{tmp_path}/kdcore.db", log_path=tmp_path / "streamlit.log",
                         env={"KDCORE_LOCAL_WORKERS": "0"}) as url:
        page.goto(url)
        page.get_by_role("heading", name="Knowledge distillation").wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('link[rel~=\"icon\"]')")
        href = page.evaluate("() => document.querySelector('link[rel~=\"icon\"]').href")
        assert href.startswith(url), href
