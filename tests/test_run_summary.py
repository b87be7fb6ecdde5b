"""kdcore.record.summary on real stored runs: the JSON round trip, the teachers, the gain sentence."""
import json

import pytest

from kdcore.configure import build_config
from kdcore.jobs import run_here
from kdcore.record.summary import FRAME_KEYS, PROMOTED_COLUMNS, RunSummary, gain_sentence
from kdcore.stats import describe_paired
from kdcore.store import Store

TWO = {"dataset": {"name": "digits", "val_fraction": 0.15},
       "teachers": [{"arch": "tiny_cnn", "epochs": 1}, {"arch": "mlp", "options": {"hidden": [32]}, "epochs": 1}],
       "student": {"arch": "mlp_tiny"}, "train": {"epochs": 1, "batch_size": 256, "seed": 0, "device": "cpu"}}


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """A store with one real completed run of two teachers on digits (seconds)."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('summary')}/kd.db")
    run_id, status = run_here(store, build_config(TWO))
    assert status == "completed", store.get_run(run_id).error
    return store, store.get_run(run_id)


def test_a_stored_summary_comes_back_unchanged(two_teachers):
    _, run = two_teachers
    stored = run.summary
    assert RunSummary.from_stored(stored).to_stored() == stored
    # through JSON too: what the store writes reads back the same
    assert json.loads(json.dumps(RunSummary.from_stored(stored).to_stored())) == json.loads(json.dumps(stored))
    copy = RunSummary.from_stored(stored).to_stored()
    copy["teachers"][0]["arch"] = "changed"
    assert run.summary["teachers"][0]["arch"] != "changed"  # the caller's dict is never shared
    for damaged in (None, [], "text", 3):
        assert RunSummary.from_stored(damaged).to_stored() == {}


def test_a_run_of_two_teachers_lists_both_with_their_arch_and_accuracy(two_teachers):
    _, run = two_teachers
    s = RunSummary.from_stored(run.summary)
    teachers = s.teachers(run.teacher_arch)
    assert [(t.phase, t.arch, t.source) for t in teachers] == [("teacher", "tiny_cnn", "train"),
                                                               ("teacher2", "mlp", "train")]
    assert [t.test_acc for t in teachers] == [run.summary["teacher_test_acc"], run.summary["teacher2_test_acc"]]
    assert teachers[1].params == run.summary["teacher2_params"] and teachers[1].flops == run.summary["teacher2_flops"]
    assert s.phases() == ["teacher", "teacher2", "baseline", "student"]


def test_a_summary_stored_before_the_teachers_list_reads_its_teacher_keys():
    old = {"teacher_test_acc": 0.9, "teacher_params": 1000, "teacher2_test_acc": 0.8, "teacher10_test_acc": 0.7,
           "teacher_flops": 50, "student_test_acc": 0.7}
    s = RunSummary.from_stored(old)
    assert s.teacher_phases() == ["teacher", "teacher2", "teacher10"]  # in their order, not as strings sort
    first = s.teachers("resnet8")[0]
    assert (first.arch, first.test_acc, first.params, first.macs) == ("resnet8", 0.9, 1000, 25)
    assert s.phases() == ["teacher", "teacher2", "teacher10", "student"]
    assert RunSummary.from_stored({"student_test_acc": 0.5}).teachers() == []


def test_the_gain_sentence_is_the_paired_description_with_the_net_images(two_teachers):
    _, run = two_teachers
    s = run.summary
    d = s["kd_gain_discordant"]
    assert gain_sentence(s) == describe_paired(s["kd_gain"], s["kd_gain_ci95"], s["kd_gain_p_value"], s["test_images"],
                                               d["student_only"] - d["baseline_only"])
    assert f"of {s['test_images']:,} test images" in gain_sentence(s)
    assert gain_sentence({"student_test_acc": 0.5}) == "no KD gain (no baseline was trained)"


def test_the_promoted_keys_are_the_stores(two_teachers):
    from kdcore.store import FRAME_FROM_SUMMARY, TEXT_FROM_SUMMARY, Run

    assert all(key in Run.model_fields for key in PROMOTED_COLUMNS)  # each promoted key has its column
    store, run = two_teachers
    frame = store.runs_frame()
    read = set(FRAME_FROM_SUMMARY) | set(TEXT_FROM_SUMMARY)
    assert {"kd_gain_low", "kd_gain_high", "precision"} <= read and all(c in frame for c in read)
    # every key the frame reads is one FRAME_KEYS names (kd_gain_ci95 for the interval, eval_precision for precision)
    # "teachers" is RunSummary's list of teachers in words, built from the summary, not one key of it
    plain = read - {"kd_gain_low", "kd_gain_high", "precision", "teachers"}
    assert plain | {"kd_gain_ci95", "eval_precision"} == set(FRAME_KEYS)
    row = frame[frame["id"] == run.id].iloc[0]
    assert row["kd_gain_low"] == run.summary["kd_gain_ci95"][0] and row["precision"] == run.summary["eval_precision"]
