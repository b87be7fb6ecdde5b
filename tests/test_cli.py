"""The `kdcore` command as a user types it, in a subprocess, against a temporary SQLite file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def kdcore(*args, db, timeout=300):
    return subprocess.run([sys.executable, "-m", "kdcore", "--db", db, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/kd.db"


def test_train_prints_the_run_and_summary_then_runs_list_and_show_agree(db):
    result = kdcore("train", "examples/digits.yaml", "--set", "teacher.epochs=2", "--set", "train.epochs=2", db=db)
    assert result.returncode == 0, result.stderr
    assert "run 1 completed" in result.stdout
    assert "KD gain" in result.stdout and "teacher" in result.stdout
    listed = json.loads(kdcore("runs", "list", "--json", db=db).stdout)
    assert [r["id"] for r in listed] == [1]
    shown = json.loads(kdcore("runs", "show", "1", "--json", db=db).stdout)
    assert shown["status"] == "completed"
    assert shown["config"]["train"]["epochs"] == 2
    for key in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "kd_gain"):
        assert isinstance(shown[key], float)
    table = kdcore("runs", "list", db=db).stdout
    assert "small_cnn → mlp" in table and "completed" in table


@pytest.mark.parametrize("override, key", [
    ("distill.temperature=0", "distill.temperature"),
    ("distill.alpha=2", "distill.alpha"),
    ("train.epochs=0", "train.epochs"),
    ("student.arch=resnet9000", "student.arch"),
    ("dataset.name=imagenet", "dataset.name"),
    ("train.learning_rate=0.1", "train.learning_rate"),
])
def test_bad_config_is_rejected_naming_the_key_and_nothing_is_written(db, tmp_path, override, key):
    result = kdcore("train", "examples/digits.yaml", "--set", override, db=db)
    assert result.returncode == 2
    assert key in result.stderr
    assert not (tmp_path / "kd.db").exists() or json.loads(kdcore("runs", "list", "--json", db=db).stdout) == []


def test_show_of_a_missing_run_is_a_clear_error(db):
    from kdcore.store import Store

    Store(db)  # an empty store: where there is none, `runs show` says so instead (tests/test_hostile_cli.py)
    result = kdcore("runs", "show", "42", db=db)
    assert result.returncode == 1 and "no run with id 42" in result.stderr


def test_models_and_datasets_are_listed(db):
    models = kdcore("models", db=db)
    assert models.returncode == 0
    for name in ("resnet8x4", "mobilenet_v2", "mlp", "googlenet"):
        assert name in models.stdout
    datasets = kdcore("datasets", "--root", str(ROOT.parent / "shared" / "data"), db=db)
    assert datasets.returncode == 0
    assert "digits" in datasets.stdout and "embedded" in datasets.stdout
    assert "cifar100" in datasets.stdout


def test_kdcore_never_imports_streamlit():
    code = ("import sys, kdcore, kdcore.cli, kdcore.jobs, kdcore.store, kdcore.engine.run, kdcore.data, kdcore.models, "
            "kdcore.losses\nimport pkgutil, importlib\n"
            "for m in pkgutil.walk_packages(kdcore.__path__, 'kdcore.'):\n"
            "    if not m.name.endswith(('__main__', 'migrations.env')): importlib.import_module(m.name)\n"
            "print('streamlit' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_train_json_carries_the_gain_its_interval_p_value_and_test_images(db):
    result = kdcore("train", "examples/digits.yaml", "--set", "teacher.epochs=2", "--set", "train.epochs=2",
                    "--json", db=db)
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    low, high = run["kd_gain_ci95"]
    assert low <= run["kd_gain"] <= high and 0 <= run["kd_gain_p_value"] <= 1 and run["test_images"] == 359


def test_train_over_seeds_prints_one_group_object_and_trains_one_teacher(db):
    from kdcore.store import Store

    result = kdcore("train", "examples/digits.yaml", "--seeds", "0-2", "--set", "teacher.epochs=2",
                    "--set", "train.epochs=2", "--json", db=db)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["config"]["train"]["seed"] for r in out["runs"]] == [0, 1, 2]
    assert {r["group"] for r in out["runs"]} == {out["group"]}
    gains = [r["kd_gain"] for r in out["runs"]]
    agg = out["aggregate"]["kd_gain"]
    assert agg["n"] == 3 and agg["mean"] == pytest.approx(sum(gains) / 3)
    assert agg["ci95"][0] <= agg["mean"] <= agg["ci95"][1]
    for key in ("student_test_acc", "baseline_test_acc", "teacher_test_acc"):
        assert set(out["aggregate"][key]) == {"mean", "std", "n", "ci95"}
    metrics = Store(db).metrics_frame([r["id"] for r in out["runs"]], kind="epoch")
    assert set(metrics.loc[metrics["phase"] == "teacher", "run_id"]) == {out["runs"][0]["id"]}
    shown = kdcore("groups", "show", out["group"], db=db)
    assert shown.returncode == 0 and "1 teacher(s) trained" in shown.stdout and "over 3 seeds" in shown.stdout
    missing = kdcore("groups", "show", "nope", db=db)
    assert missing.returncode == 1 and "no group named 'nope'" in missing.stderr


def test_reading_the_store_loads_no_torch(tmp_path):
    """`runs list`, `runs show` and `groups list` are a second's work, not the four of loading PyTorch and the zoo."""
    db = f"sqlite:///{tmp_path}/kd.db"
    from kdcore.store import Store

    Store(db)  # an empty store, made here
    probe = ("import sys\nfrom kdcore.cli import main\n"
             f"for args in (['runs', 'list'], ['runs', 'show', '1'], ['groups', 'list']):\n"
             f"    main(['--db', {db!r}, *args])\n"
             "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
