"""A store written before the record/pipeline refactor reads the same after it, and reading changes nothing.

tests/fixtures/store-0.3 was written by kdcore at commit c7834ab (schema 0003): a run of two teachers and a
seed group of two runs on digits. tests/fixtures/store-0.3-expected holds what `runs list/show` and `groups show`
printed then, as JSON.
"""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "store-0.3"
EXPECTED = ROOT / "tests" / "fixtures" / "store-0.3-expected"
sys.path.insert(0, str(ROOT))

from kdcore.record import RunFolder  # noqa: E402
from kdcore.store import Store  # noqa: E402


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _kdcore_json(db: Path, *args: str):
    result = subprocess.run([sys.executable, "-m", "kdcore", "--db", f"sqlite:///{db}", *args, "--json"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def old_store(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "store"))


def _rows(db: Path, without=()) -> dict:
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                  if t != "alembic_version"]
        out = {}
        for table in tables:
            cursor = conn.execute(f"SELECT * FROM {table} ORDER BY rowid")
            names = [d[0] for d in cursor.description]
            out[table] = [{n: v for n, v in zip(names, row) if n not in without} for row in cursor]
    return out


def test_a_store_written_before_the_refactor_lists_and_shows_the_same(old_store):
    before = _digests(old_store)
    rows_before = _rows(old_store / "kdcore.db")
    assert _kdcore_json(old_store / "kdcore.db", "runs", "list") == json.loads((EXPECTED / "runs-list.json").read_text())
    for run_id in (1, 2, 3):
        shown = _kdcore_json(old_store / "kdcore.db", "runs", "show", str(run_id))
        assert shown == json.loads((EXPECTED / f"run-{run_id}.json").read_text()), run_id
    group = json.loads((EXPECTED / "group.json").read_text())
    shown = _kdcore_json(old_store / "kdcore.db", "groups", "show", group["group"])
    # every key it printed then reads the same; a group also lists its settings now (swept, cells: one, here)
    assert {k: shown[k] for k in group} == group
    assert shown["swept"] == [] and len(shown["cells"]) == 1
    after = {k: v for k, v in _digests(old_store).items() if not k.endswith(("-wal", "-shm", ".lock"))}
    # the run folders are untouched; the store file gained schema 0004's failure column, every stored value kept
    assert {k: v for k, v in after.items() if k != "kdcore.db"} == {k: v for k, v in before.items() if k != "kdcore.db"}
    assert _rows(old_store / "kdcore.db", without=("failure",)) == rows_before


def test_the_run_folders_of_the_old_store_name_the_same_files(old_store):
    store = Store(f"sqlite:///{old_store / 'kdcore.db'}")
    two_teachers = RunFolder(store.run_dir(1))
    assert two_teachers.teachers_saved() == ["teacher", "teacher2"]
    assert two_teachers.test_logits.is_file() and two_teachers.finished.is_file()
    for run_id in (1, 2, 3):
        folder = RunFolder(store.run_dir(run_id))
        stored = {kind.removesuffix("_weights"): path for kind, path in store.artefacts(run_id).items()
                  if kind.endswith("_weights")}
        assert {kind: folder.weights(kind.removesuffix("_last"), last=kind.endswith("_last")) for kind in stored} \
            == stored
