"""One verdict per KD gain: the interval and the test never give two opposite answers (issue 20)."""
import numpy as np

from kdcore.record import gain_sentence
from kdcore.stats import describe_paired, paired_gain

TEST_IMAGES = 400


def _pairs(only_a: int, only_b: int, n: int = TEST_IMAGES):
    """Per-image correctness of two models on n images: only_a right for A alone, only_b for B alone."""
    both = (n - only_a - only_b) // 2
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * (n - only_a - only_b - both)
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * (n - only_a - only_b - both)
    return np.array(a, bool), np.array(b, bool)


def _says_real(words: str) -> bool:
    return ": real" in words


def test_the_interval_excludes_zero_exactly_when_mcnemars_test_is_significant():
    for only_a in range(0, 30):
        for only_b in range(0, 30):
            g = paired_gain(*_pairs(only_a, only_b))
            low, high = g.ci95
            assert (g.p_value < 0.05) == (low > 0 or high < 0), (only_a, only_b, g.ci95, g.p_value)


def test_a_gain_at_the_edge_reads_one_answer():
    # 6 images only the student gets right, 16 only the baseline, of 400: p = 0.052; a paired bootstrap put the
    # interval at -5.00 to -0.25 points and the run read "interval below zero: not distinguishable from chance"
    summary = paired_gain(*_pairs(6, 16)).as_summary()
    words = gain_sentence(summary)
    low, high = summary["kd_gain_ci95"]
    assert low < 0 < high
    assert "not distinguishable from chance (p = 0.0525)" in words
    real_side = paired_gain(*_pairs(5, 17)).as_summary()  # p = 0.017: real, and the interval below zero
    assert real_side["kd_gain_ci95"][1] < 0 and _says_real(gain_sentence(real_side))


def test_a_run_stored_with_a_bootstrap_interval_reads_the_exact_one_from_its_counts():
    stored = {"kd_gain": -0.025, "kd_gain_ci95": [-0.05, -0.0025], "kd_gain_p_value": 0.0525, "test_images": 400,
              "kd_gain_discordant": {"student_only": 6, "baseline_only": 16}}
    words = gain_sentence(stored)
    assert "95% interval −4.32 to +0.02" in words and "not distinguishable from chance" in words


def test_a_stored_interval_that_disagrees_with_its_test_reads_borderline():
    # no discordant counts to recompute it from: say so rather than print two answers
    words = describe_paired(-0.0501, [-0.0975, -0.0028], 0.052, 359)
    assert "borderline" in words and "not distinguishable" not in words and not _says_real(words)
    words = describe_paired(0.03, [-0.001, 0.06], 0.04, 359)
    assert "borderline" in words and not _says_real(words)


def test_p_values_near_the_line_are_not_rounded_onto_it():
    assert describe_paired(0.02, [0.001, 0.04], 0.0496, 400).endswith("real at p = 0.0496")
    assert describe_paired(0.02, [-0.001, 0.04], 0.0504, 400).endswith("(p = 0.0504)")


def test_the_runs_table_shows_the_exact_interval_of_a_run_stored_with_a_bootstrap_one(store):
    from kdcore.configure import build_config

    run_id = store.create_run(build_config({"dataset": {"name": "digits"}}))
    store.claim("w:1", run_id=run_id)
    store.finish_run(run_id, "completed", {
        "student_test_acc": 0.8, "baseline_test_acc": 0.825, "kd_gain": -0.025, "kd_gain_ci95": [-0.05, -0.0025],
        "kd_gain_p_value": 0.0525, "test_images": 400, "kd_gain_discordant": {"student_only": 6, "baseline_only": 16}},
        worker="w:1")
    for frame in (store.runs_frame(), store.runs_table()):
        row = frame[frame["id"] == run_id].iloc[0]
        assert row["kd_gain_low"] < 0 < row["kd_gain_high"], (row["kd_gain_low"], row["kd_gain_high"])
        assert abs(row["kd_gain_p_value"] - 0.0525) < 0.001
