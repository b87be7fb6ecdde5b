"""A sweep is summarised per setting (a cell), never across settings as if they were seeds (issue 20); the CLI
sweeps as the form does, as one group."""
import contextlib
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from kdcore.cli import main  # noqa: E402
from kdcore.configure import build_config  # noqa: E402
from kdcore.experiments import expand, group_report  # noqa: E402
from kdcore.report import build_report  # noqa: E402
from kdcore.stats import across_seeds  # noqa: E402
from kdcore.store import Store  # noqa: E402
from tests.helpers import no_exceptions, open_page  # noqa: E402

TINY = ROOT / "examples" / "digits.yaml"
FAST = ["--set", "teacher.epochs=1", "--set", "train.epochs=1", "--set", "teacher.arch=tiny_cnn",
        "--set", "teacher.options={}", "--set", "student.arch=mlp_tiny", "--set", "student.options={}"]


def _runs(configs, gains):
    """Store-like rows for these configs, each completed with its KD gain (a fraction)."""
    rows = []
    for i, (cfg, gain) in enumerate(zip(configs, gains), start=1):
        summary = {"kd_gain": gain, "student_test_acc": 0.9 + gain, "baseline_test_acc": 0.9,
                   "teacher_test_acc": 0.95, "kd_gain_p_value": 0.5, "test_images": 400,
                   "kd_gain_discordant": {"student_only": 20, "baseline_only": 20}}
        rows.append(SimpleNamespace(id=i, status="completed", group=cfg.group, config=cfg.model_dump(mode="json"),
                                    summary=summary, kd_gain=gain, student_test_acc=0.9 + gain,
                                    baseline_test_acc=0.9, teacher_test_acc=0.95))
    return rows


def _config():
    return build_config({"dataset": {"name": "digits"}, "train": {"epochs": 1}})


def test_a_sweep_of_one_seed_is_never_averaged_across_its_settings():
    # the case: four (T, α) settings of seed 0 read as "over 4 seeds"
    configs = expand(_config(), temperatures=[2, 8], alphas=[0.5, 0.9], group="sweep")
    report = group_report(_runs(configs, [0.01, -0.2, 0.03, -0.1]))
    assert report["swept"] == ["distill.temperature", "distill.alpha"]
    assert [c["label"] for c in report["cells"]] == ["T=2 α=0.5", "T=2 α=0.9", "T=8 α=0.5", "T=8 α=0.9"]
    assert all(v is None for v in report["aggregate"].values())  # nothing pooled across settings
    assert "over 4 seeds" not in report["kd_gain_in_words"] and "not averaged" in report["kd_gain_in_words"]
    for cell in report["cells"]:  # one seed each: that run's own paired verdict, not a spread over seeds
        assert cell["aggregate"]["kd_gain"]["n"] == 1
        assert cell["kd_gain_in_words"].startswith("one seed: ") and "p = 1" in cell["kd_gain_in_words"]


def test_a_sweep_repeated_over_seeds_has_an_interval_per_setting():
    configs = expand(_config(), seeds=[0, 1, 2], temperatures=[2, 8], group="sweep x seeds")
    gains = {2.0: [0.01, 0.02, 0.04], 8.0: [-0.05, -0.03, -0.02]}
    order = [gains[c.distill.temperature].pop(0) for c in configs]
    report = group_report(_runs(configs, order))
    assert report["swept"] == ["distill.temperature"]
    by_label = {c["label"]: c for c in report["cells"]}
    assert set(by_label) == {"T=2", "T=8"}
    for label, values in (("T=2", [0.01, 0.02, 0.04]), ("T=8", [-0.05, -0.03, -0.02])):
        cell = by_label[label]
        assert cell["seeds"] == [0, 1, 2] and cell["completed"] == 3
        assert cell["aggregate"]["kd_gain"]["ci95"] == pytest.approx(across_seeds(values).ci95)
        assert "over 3 seeds" in cell["kd_gain_in_words"]


def test_a_seed_group_is_one_cell_even_with_a_teacher_per_seed():
    configs = expand(_config(), seeds=[0, 1, 2], teacher_per_seed=True, group="seeds")
    assert len({c.teacher_seed for c in configs}) == 3  # the teachers' seeds differ, the setting does not
    report = group_report(_runs(configs, [0.01, 0.02, 0.04]))
    assert report["swept"] == [] and len(report["cells"]) == 1
    assert report["aggregate"]["kd_gain"]["n"] == 3 and "over 3 seeds" in report["kd_gain_in_words"]


def test_a_sweep_over_any_key_is_read_from_the_stored_configs():
    configs = expand(_config(), seeds=[0, 1], sweep={"train.lr": [0.001, 0.01]}, group="lr")
    assert [c.train.lr for c in configs] == [0.001, 0.01, 0.001, 0.01]
    assert configs[1].name.endswith("train.lr=0.01 seed 0")
    report = group_report(_runs(configs, [0.01, 0.02, 0.03, 0.04]))
    assert report["swept"] == ["train.lr"]
    assert [(c["label"], c["run_ids"]) for c in report["cells"]] == [("train.lr=0.001", [1, 3]),
                                                                     ("train.lr=0.01", [2, 4])]


@pytest.mark.parametrize("sweep, message", [
    ("distill.temperature=4,4", "--sweep distill.temperature: the value 4 is given twice"),
    ("distill.alpha=0.5,0.50", "--sweep distill.alpha: the value 0.5 is given twice"),
    ("train.lrr=0.1,0.2", "--sweep train.lrr: unknown key"),
    ("distill.temperatur=2,4", "--sweep distill.temperatur: unknown key"),
    ("train.seed=1,2", "--sweep train.seed: use --seeds for seeds"),
    ("distill.temperature=2,0", "--sweep distill.temperature=0: Input should be greater than 0"),
    ("distill.temperature", "--sweep 'distill.temperature': write KEY=V1,V2"),
])
def test_a_bad_cli_sweep_is_refused_in_one_line_naming_what_is_wrong(tmp_path, capsys, sweep, message):
    db = f"sqlite:///{tmp_path}/kd.db"
    for command in ("train", "submit"):
        assert main(["--db", db, command, str(TINY), "--sweep", sweep]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert Store(db).list_runs() == []


def test_the_same_key_swept_twice_is_refused(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/kd.db"
    assert main(["--db", db, "submit", str(TINY), "--sweep", "distill.alpha=0.5", "--sweep", "distill.alpha=0.9"]) == 2
    assert "--sweep distill.alpha: given twice" in capsys.readouterr().err


def test_cli_submit_queues_a_sweep_with_seeds_as_one_group(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/kd.db"
    assert main(["--db", db, "submit", str(TINY), "--sweep", "distill.temperature=2,8",
                 "--sweep", "distill.alpha=0.5,0.9", "--seeds", "0-2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs = Store(db).list_runs(group=out["group"])
    assert len(runs) == len(out["runs"]) == 12
    settings = {(r.config["distill"]["temperature"], r.config["distill"]["alpha"], r.config["train"]["seed"])
                for r in runs}
    assert len(settings) == 12


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory):
    """A real sweep over T, repeated over two seeds, queued as the form queues one."""
    from kdcore.configure import load_config
    from kdcore.jobs import run_here

    db = f"sqlite:///{tmp_path_factory.mktemp('sweep')}/kd.db"
    store = Store(db)
    config = load_config(TINY, [item for item in FAST if item != "--set"])
    configs = expand(config, seeds=[0, 1], temperatures=[2, 8], alphas=[0.9], group="sweep T")
    for cfg in configs:
        run_id, status = run_here(store, cfg)
        assert status == "completed", store.get_run(run_id).error
    return {"db": db, "group": "sweep T"}


def test_cli_train_sweep_with_seeds_prints_an_interval_per_setting(tmp_path):
    db = f"sqlite:///{tmp_path}/kd.db"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["--db", db, "train", str(TINY), *FAST, "--sweep", "distill.temperature=2,8", "--seeds", "0-1",
                     "--json"])
    assert code == 0
    out = json.loads(buffer.getvalue())
    assert out["swept"] == ["distill.temperature"] and len(out["runs"]) == 4
    assert len({r["group"] for r in out["runs"]}) == 1
    assert all(v is None for v in out["aggregate"].values())
    for cell in out["cells"]:
        gains = [r["kd_gain"] for r in out["runs"] if r["id"] in cell["run_ids"]]
        assert cell["aggregate"]["kd_gain"]["n"] == 2
        assert cell["aggregate"]["kd_gain"]["ci95"] == pytest.approx(across_seeds(gains).ci95)


def test_groups_show_gives_each_setting_its_own_spread(trained_sweep, capsys):
    group = trained_sweep["group"]
    assert main(["--db", trained_sweep["db"], "groups", "show", group]) == 0
    text = capsys.readouterr().out
    assert "over 4 seeds" not in text and "a sweep of 2 settings of T" in text
    assert text.count("over 2 seeds (95% interval") == 2
    assert main(["--db", trained_sweep["db"], "groups", "show", group, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in shown["cells"]] == ["T=2", "T=8"] and shown["kd_gain_in_words"].startswith("a sweep")


def test_the_report_of_a_sweep_answers_per_setting(trained_sweep):
    html = build_report(Store(trained_sweep["db"]), trained_sweep["group"], latency=False)
    assert "KD gain per setting" in html and "KD gain across seeds" not in html
    assert "over 4 seeds" not in html and html.count("over 2 seeds (95% interval") == 2


def test_the_runs_page_shows_a_sweep_per_setting(trained_sweep, monkeypatch):
    monkeypatch.setenv("KDCORE_DB_URL", trained_sweep["db"])
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = open_page("pages/runs.py")
    no_exceptions(at)
    assert not any("KD gain over seeds" in s.value for s in [*at.success, *at.info])
    assert any("a sweep of 2 settings of T" in i.value for i in at.info)
    assert at.selectbox(key="runs_group_cell").options == ["T=2", "T=8"]
    assert any("over 2 seeds (95% interval" in c.value for c in at.caption)


def test_the_live_pages_group_card_of_a_sweep_gives_no_spread_over_seeds(trained_sweep, monkeypatch):
    monkeypatch.setenv("KDCORE_DB_URL", trained_sweep["db"])
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    at = open_page("pages/live.py")
    at.selectbox(key="live_pick").set_value(Store(trained_sweep["db"]).list_runs(group="sweep T")[0].id).run()
    no_exceptions(at)
    shown = " ".join(x.value for x in [*at.info, *at.success, *at.caption])
    assert "a sweep of 2 settings of T" in shown and "over 4 seeds" not in shown and "over seeds" not in shown
