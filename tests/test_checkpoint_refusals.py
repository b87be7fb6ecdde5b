"""A bad checkpoint is refused in one sentence of ours that says what is wrong with the file and what to do:
never the library's own text (KeyError: 101, PyTorch's internal asserts, advice to call add_safe_globals).
Each file is a real bad file, fed to the loader and uploaded in the New experiment form."""
import collections
import pathlib
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the app's own packages (ui), as `streamlit run` would see them

from kdcore.engine.checkpoint import CheckpointError, load_pretrained, save_checkpoint  # noqa: E402
from kdcore.models import create_model  # noqa: E402
from tests.helpers import errors, new_experiment_with, no_exceptions  # noqa: E402

LIBRARY_TEXT = ("KeyError", "add_safe_globals", "Could this error message", "WeightsUnpickler", "miniz",
                "Errno", "magic number", "Traceback", "EOFError", "RuntimeError")


def _good(path: Path) -> Path:
    save_checkpoint(path, create_model("small_cnn", 10, 1, 8), arch="small_cnn", num_classes=10, in_channels=1,
                    image_size=8)
    return path


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a real bad file, the words its refusal must hold)."""
    folder.mkdir(exist_ok=True)
    made = {}
    path = folder / "with_a_path.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "where": pathlib.PosixPath("/etc")}, path)
    made["a pickled object that is not allowed"] = (path, "could run code")
    path = folder / "wrong_keys.pt"
    torch.save(collections.OrderedDict({"conv.weight": torch.zeros(3, 3)}), path)
    made["a state dict of another model"] = (path, "holds the weights of another model")
    whole = _good(folder / "good.pt").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 10, 100):
        path = folder / f"cut_at_{cut}.pt"
        path.write_bytes(whole[:cut])
        made[f"cut short at byte {cut}"] = (path, "damaged or cut short")
    path = folder / "text.pt"
    path.write_bytes(b"hello world, this is not a checkpoint")  # torch.load: KeyError: 101
    made["text"] = (path, "is not a PyTorch checkpoint")
    path = folder / "empty.pt"
    path.write_bytes(b"")
    made["an empty file"] = (path, "is empty")
    path = folder / "a_list.pt"
    torch.save([torch.zeros(1)], path)
    made["tensors but no weights mapping"] = (path, "holds no model weights")
    return made


def test_each_bad_checkpoint_is_refused_in_one_plain_sentence(tmp_path):
    for what, (path, words) in _bad_files(tmp_path / "bad").items():
        with pytest.raises(CheckpointError) as refused:
            load_pretrained(path, arch="small_cnn", num_classes=10, in_channels=1, image_size=8)
        message = str(refused.value)
        assert words in message and path.name in message, (what, message)
        assert not any(t in message for t in LIBRARY_TEXT), (what, message)
        assert "\n" not in message and (": " in message or "; " in message), (what, message)  # and what to do


@pytest.mark.parametrize("name", ["with_a_path.pt", "wrong_keys.pt", "text.pt", "cut_at_100.pt"])
def test_a_bad_teacher_checkpoint_uploaded_in_the_form_is_refused_in_plain_words(tmp_path, monkeypatch, name):
    monkeypatch.setenv("KDCORE_DB_URL", f"sqlite:///{tmp_path}/kdcore.db")
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    files = _bad_files(tmp_path / "bad")
    path, words = next(v for v in files.values() if v[0].name == name)
    at = new_experiment_with(**{"f.teacher.source": "checkpoint", "f.teacher.arch": "small_cnn"})
    at.file_uploader(key="ui.checkpoint").upload(name, path.read_bytes()).run()
    no_exceptions(at)
    shown = errors(at)
    assert words in shown, shown
    assert f"`teacher.checkpoint`: {name}" in shown  # the name the user chose
    assert not any(t in shown for t in LIBRARY_TEXT), shown
    assert at.button(key="ui.launch").disabled


def test_an_uploaded_teacher_checkpoint_is_still_used_after_a_visit_to_another_page(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_DB_URL", f"sqlite:///{tmp_path}/kdcore.db")
    monkeypatch.setenv("KDCORE_LOCAL_WORKERS", "0")
    good = _good(tmp_path / "teacher.pt")
    at = new_experiment_with(**{"f.teacher.source": "checkpoint", "f.teacher.arch": "small_cnn",
                                "f.teacher.options": ""})
    at.file_uploader(key="ui.checkpoint").upload("teacher.pt", good.read_bytes()).run()
    assert "teacher" not in errors(at) and not at.button(key="ui.launch").disabled, errors(at)
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/new_experiment.py").run()
    no_exceptions(at)
    assert "teacher" not in errors(at) and not at.button(key="ui.launch").disabled, errors(at)
    assert any(c.value == "Using teacher.pt, uploaded before" for c in at.caption)
    at.file_uploader(key="ui.checkpoint").upload("teacher.pt", good.read_bytes()).run()
    at.file_uploader(key="ui.checkpoint").clear().run()  # removed by the user: no longer used
    assert "teacher.checkpoint is required" in errors(at)
