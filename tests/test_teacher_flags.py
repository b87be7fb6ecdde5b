"""A teacher at chance, or no better than the baseline, is flagged wherever its KD gain is shown (issue 20)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from kdcore.cli import main  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.jobs import run_here  # noqa: E402
from kdcore.record import RunSummary  # noqa: E402
from kdcore.report import build_report  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.helpers import open_page, select_first_run  # noqa: E402

# lr 10 for the teacher alone: it ends at chance, while the student and baseline learn as usual
CHANCE = {"name": "chance teacher", "dataset": {"name": "digits", "val_fraction": 0.15},
          "teacher": {"arch": "tiny_cnn", "epochs": 1, "train": {"lr": 10}},
          "student": {"arch": "mlp_tiny"}, "train": {"epochs": 2, "batch_size": 64, "seed": 0, "device": "cpu"}}

# examples/mnist_hinton.yaml on a GPU: teacher and baseline both at 98.69% of 10,000 test images
NO_BETTER = {"num_classes": 10, "test_images": 10_000, "teacher_test_acc": 0.9869, "baseline_test_acc": 0.9869,
             "student_test_acc": 0.9871, "kd_gain": 0.0002, "kd_gain_p_value": 0.89,
             "kd_gain_discordant": {"student_only": 40, "baseline_only": 38},
             "teachers": [{"phase": "teacher", "arch": "mlp", "source": "train", "test_acc": 0.9869}]}


@pytest.fixture(scope="module")
def chance_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('chance')}/kdcore.db"
    store = Store(url)
    run_id, status = run_here(store, build_config(CHANCE))
    assert status == "completed", store.get_run(run_id).error
    run = store.get_run(run_id)
    assert run.teacher_test_acc < 0.15, "lr 10 no longer wrecks the teacher: pick another way to reach chance"
    return {"url": url, "run": run}


def test_a_teacher_at_chance_is_flagged_in_its_summary(chance_run):
    flags = RunSummary.from_stored(chance_run["run"].summary).teacher_flags()
    assert len(flags) == 1 and "at chance" in flags[0] and "10 classes" in flags[0]
    assert "says nothing about distillation" in flags[0]


def test_a_teacher_at_chance_is_flagged_by_runs_show(chance_run, capsys):
    assert main(["--db", chance_run["url"], "runs", "show", str(chance_run["run"].id)]) == 0
    out = capsys.readouterr().out
    assert "warning: teacher at chance" in out


def test_a_teacher_at_chance_is_flagged_in_the_report(chance_run):
    html = build_report(Store(chance_run["url"]), chance_run["run"].id, latency=False)
    assert "teacher-flag" in html and "Teacher at chance" in html


def test_a_teacher_at_chance_is_flagged_on_the_run_card(chance_run, monkeypatch):
    monkeypatch.setenv("KDCORE_DB_URL", chance_run["url"])
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = select_first_run(open_page("pages/runs.py"))
    assert any("Teacher at chance" in w.value for w in at.warning), [w.value for w in at.warning]


def test_a_teacher_no_better_than_the_baseline_is_flagged():
    flags = RunSummary.from_stored(NO_BETTER).teacher_flags()
    assert len(flags) == 1 and "no better than the baseline" in flags[0] and "98.69%" in flags[0]
    assert "means little" in flags[0]


def test_a_teacher_clearly_better_than_the_baseline_and_chance_is_not_flagged():
    better = {**NO_BETTER, "teacher_test_acc": 0.992, "baseline_test_acc": 0.985}
    assert RunSummary.from_stored(better).teacher_flags() == []


def test_an_ensemble_no_better_than_the_baseline_is_flagged_as_the_teachers_together():
    two = {**NO_BETTER, "teacher_test_acc": 0.99, "teacher2_test_acc": 0.95, "ensemble_test_acc": 0.986,
           "teachers": [{"phase": "teacher", "arch": "mlp"}, {"phase": "teacher2", "arch": "mlp"}]}
    flags = RunSummary.from_stored(two).teacher_flags()
    assert len(flags) == 1 and flags[0].startswith("the 2 teachers together no better than the baseline")


def test_the_report_flags_a_teacher_no_better_than_the_baseline():
    from kdcore.report import _gain_block, _Page

    page = _Page(presentation=False)
    _gain_block(page, NO_BETTER)
    assert "Teacher no better than the baseline" in page.render()


def test_a_group_with_a_teacher_at_chance_is_flagged_by_groups_show_and_its_report(chance_run, capsys):
    from kdcore.experiments import expand

    store = Store(chance_run["url"])
    for cfg in expand(build_config(CHANCE), seeds=[0, 1], group="chance seeds"):
        run_id, status = run_here(store, cfg)
        assert status == "completed", store.get_run(run_id).error
    assert main(["--db", chance_run["url"], "groups", "show", "chance seeds"]) == 0
    out = capsys.readouterr().out
    assert out.count(": teacher at chance") == 2
    html = build_report(store, "chance seeds", latency=False)
    assert html.count("teacher-flag") >= 2 and "teacher at chance" in html
