"""The run vocabulary of kdcore/record/: phase names and the files of a run's folder."""
import pytest

from kdcore.record import RunFolder, is_teacher, phase_order, teacher_index, teacher_phase, teacher_phases


def test_teacher_phases_are_named_and_ordered_in_one_way():
    assert [teacher_phase(i) for i in range(4)] == ["teacher", "teacher2", "teacher3", "teacher4"]
    assert [teacher_index(teacher_phase(i)) for i in range(12)] == list(range(12))
    assert is_teacher("teacher10") and not any(map(is_teacher, ["teacher1", "teacher0", "teacher_last", "student"]))
    assert teacher_phases(["student", "teacher10", "teacher2", "teacher", "baseline"]) == ["teacher", "teacher2",
                                                                                           "teacher10"]
    assert sorted(["baseline", "student", "teacher2", "teacher"], key=phase_order) == ["teacher", "teacher2",
                                                                                      "student", "baseline"]
    with pytest.raises(ValueError, match="not a teacher's phase"):
        teacher_index("student")


def test_a_run_folder_names_every_file_and_finds_the_weights_present(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.weights("teacher2").name == "teacher2.pt" and folder.weights("student", last=True).name == \
        "student_last.pt"
    assert folder.state("baseline").name == "baseline_state.pt" and folder.test_logits.name == "test_logits.pt"
    for name in ("teacher.pt", "teacher_last.pt", "teacher2.pt", "student.pt", "notes.pt", "x.pt.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert list(folder.weight_files()) == ["student", "teacher", "teacher2", "teacher_last"]
    assert folder.teachers_saved() == ["teacher", "teacher2"]
    assert [p.name for p in folder.partial_files()] == ["x.pt.tmp"]
