import pytest

from kdcore.config import ConfigError
from kdcore.configure import build_config, load_config


def test_defaults_are_valid_and_round_trip_through_json():
    cfg = build_config({})
    again = build_config(cfg.model_dump(mode="json"))
    assert again == cfg


@pytest.mark.parametrize("data, key", [
    ({"distill": {"temperature": 0}}, "distill.temperature"),
    ({"distill": {"temperature": -2}}, "distill.temperature"),
    ({"distill": {"alpha": 1.5}}, "distill.alpha"),
    ({"distill": {"alpha": -0.1}}, "distill.alpha"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"teacher": {"arch": "resnet9000"}}, "teacher.arch"),
    ({"student": {"arch": "nope"}}, "student.arch"),
    ({"dataset": {"name": "imagenet22k"}}, "dataset.name"),
    ({"distill": {"temprature": 4}}, "distill.temprature"),
    ({"trian": {"epochs": 3}}, "trian"),
    ({"distill": {"method": "telepathy"}}, "distill.method"),
    ({"teacher": {"source": "run"}}, "teacher"),
])
def test_bad_values_are_rejected_naming_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        build_config(data)
    assert key in str(err.value)


def test_unknown_key_message_says_unknown():
    with pytest.raises(ConfigError, match=r"distill\.temprature: unknown key"):
        build_config({"distill": {"temprature": 4}})


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  temperature: 2\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["distill.temperature=8.5", "train.amp=false", "teacher.options={hidden: [32, 16]}"])
    assert cfg.distill.temperature == 8.5
    assert cfg.train.amp is False
    assert cfg.teacher.options == {"hidden": [32, 16]}


def test_malformed_files_and_overrides_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(_ok(tmp_path), ["distill.temperature"])


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not (tmp_path / "pwned").exists()


def _ok(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("{}\n")
    return p


def test_every_example_config_is_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples"
    examples = sorted(p for p in root.rglob("*.yaml") if "spaces" not in p.parts)  # recipes/ too
    assert examples, "examples/ holds no configs"
    for path in examples:
        load_config(path)


def test_every_example_space_fits_the_config_its_command_names():
    import re
    from pathlib import Path

    from kdcore.studies import load_space, parse_space

    root = Path(__file__).resolve().parents[1]
    spaces = sorted((root / "examples" / "spaces").glob("*.yaml"))
    assert spaces
    for path in spaces:
        command = re.search(r"kdcore tune (\S+\.yaml) --space (\S+\.yaml)", path.read_text())
        assert command and root / command[2] == path, f"{path.name} names no `kdcore tune CONFIG --space` for itself"
        parse_space(load_space(path), load_config(root / command[1]))


def test_overrides_leave_the_callers_dict_untouched():
    base = {"train": {"lr": 0.001}}
    assert build_config(base, ["train.lr=0.5"]).train.lr == 0.5
    assert base == {"train": {"lr": 0.001}}
    assert build_config(base).train.lr == 0.001
