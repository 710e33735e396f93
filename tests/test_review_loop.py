"""The review loop's parts: the simulated reviewer, the start set, the recipe and the comparison."""

from __future__ import annotations

import pytest

from experiments.detection_tables import (
    RAVEN_COLUMNS,
    TABLE_SUFFIX,
    read_selection_table,
    write_selection_table,
)
from experiments.errors import ExperimentError
from experiments.review_loop import Plan, read_recipe
from experiments.review_report import compare, cost_line, mean_std, write_comparison
from experiments.review_sim import Reviewer, reviewed_facts, start_rows
from melshards.errors import ConfigError

TRUTH = """recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max
r1,3,1,2.0,100,3.0,900
r1,3,1,4.0,100,4.4,900
r1,5,1,12.0,100,14.0,900
r2,7,1,0.2,100,0.5,900
"""


@pytest.fixture
def reviewer(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(TRUTH)
    return Reviewer(path, min_overlap=0.5)


def test_a_call_of_the_asked_class_is_accepted_with_a_box_around_its_calls(reviewer):
    got = reviewer.answer("r1", "s3", 0.0, 10.0)
    assert (got.value, got.begin, got.end) == ("yes", 2.0, 4.4)  # both calls of s3, as one box


def test_the_box_is_cut_to_the_selection(reviewer):
    got = reviewer.answer("r1", "s5", 10.0, 13.0)  # 1 s of the 2 s call: counts (>= 0.5 s)
    assert (got.value, got.begin, got.end) == ("yes", 12.0, 13.0)


def test_a_call_of_another_class_relabels_the_selection(reviewer):
    got = reviewer.answer("r1", "s9", 11.0, 20.0)
    assert (got.value, got.begin, got.end) == ("s5", 12.0, 14.0)


def test_the_most_overlapping_other_call_names_the_class(reviewer):
    got = reviewer.answer("r1", "s9", 2.5, 12.9)  # s3: 0.5 + 0.4 s, s5: 0.9 s
    assert got.value == "s5"


def test_no_call_that_counts_is_a_rejection(reviewer):
    assert reviewer.answer("r1", "s3", 4.2, 10.0).value == "no"  # 0.2 s of a 0.4 s call: not all of it
    assert reviewer.answer("r1", "s3", 20.0, 30.0).value == "no"
    assert reviewer.answer("r9", "s3", 0.0, 10.0).value == "no"  # a recording without calls
    short = reviewer.answer("r2", "s7", 0.0, 1.0)  # a 0.3 s call wholly inside counts
    assert (short.value, short.begin, short.end) == ("yes", 0.2, 0.5)


def _asked(path, class_name, begin, end):
    row = {"Selection": 1, "Begin Time (s)": f"{begin:.6f}", "End Time (s)": f"{end:.6f}"}
    return write_selection_table(path, RAVEN_COLUMNS, [row | {"Class": class_name}])


def test_a_review_that_repeats_an_earlier_one_is_left_unreviewed(reviewer, tmp_path):
    # Round 1 asks s9 over [11, 20]: relabelled s5, box 12-14. Round 2 asks s5 over [10, 20]: its
    # yes would box the same call the same way, a duplicate TP for precompute --reviews.
    first = _asked(tmp_path / "round-1" / f"r1{TABLE_SUFFIX}", "s9", 11.0, 20.0)
    assert reviewer.review_table(first, "r1", set())["relabelled"] == 1
    seen = reviewed_facts([tmp_path / "round-1"])
    assert seen == {
        ("r1", "s5", "tp", "12.000000", "14.000000"),
        ("r1", "s9", "fp", "12.000000", "14.000000"),
    }
    second = _asked(tmp_path / "round-2" / f"r1{TABLE_SUFFIX}", "s5", 10.0, 20.0)
    assert reviewer.review_table(second, "r1", seen) == {"yes": 0, "no": 0, "relabelled": 0, "repeat": 1}
    assert read_selection_table(second)[1][0]["Review"] == ""  # precompute --reviews skips it
    third = _asked(tmp_path / "round-3" / f"r1{TABLE_SUFFIX}", "s3", 0.0, 10.0)
    assert reviewer.review_table(third, "r1", seen)["yes"] == 1  # a new call: reviewed
    assert ("r1", "s3", "tp", "2.000000", "4.400000") in seen


def _demo_tables(tmp_path):
    header = "recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"
    (tmp_path / "train_tp.csv").write_text(header + "b,1,1,1,0,2,9\na,2,1,1,0,2,9\nc,3,1,1,0,2,9\n")
    (tmp_path / "train_fp.csv").write_text(header + "c,4,1,1,0,2,9\na,5,1,3,0,4,9\n")


def test_start_rows_keep_the_first_recordings_rows_in_file_order(tmp_path):
    _demo_tables(tmp_path)
    labelled, pool, rows = start_rows(tmp_path, ["c", "a", "b", "d"], start=2)
    assert (labelled, pool) == (["a", "b"], ["c", "d"])
    assert [r[:2] for r in rows["tp"]] == [["b", "1"], ["a", "2"]]
    assert [r[:2] for r in rows["fp"]] == [["a", "5"]]


def test_start_rows_refuse_a_start_that_leaves_no_pool(tmp_path):
    _demo_tables(tmp_path)
    with pytest.raises(ExperimentError, match=r"start 4: keep between 1 and 3 of 4 recordings"):
        start_rows(tmp_path, ["a", "b", "c", "d"], start=4)


def test_a_recipe_is_read_and_checked(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nepochs = 5\n[loop]\nrounds = 2\nn = 8\n[loop.train]\nepochs = 2\n")
    options, plan = read_recipe(recipe)
    assert options == {"epochs": 5}
    assert (plan.rounds, plan.n, plan.per_recording, dict(plan.train)) == (2, 8, 1, {"epochs": 2})
    recipe.write_text("[loop]\nn = 0\n")
    with pytest.raises(ConfigError, match=r"r.toml \[loop\]: n must be an integer >= 1, got 0"):
        read_recipe(recipe)
    recipe.write_text("[loop]\nwindows = 3\n")
    with pytest.raises(ConfigError, match=r"\[loop\]: unknown key\(s\) windows"):
        read_recipe(recipe)
    recipe.write_text("[loop.train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) epochz"):
        read_recipe(recipe)
    assert read_recipe(None) == ({}, Plan())


def _records():
    records = [{"round": 0, "seed": s, "test_lwlrap": v, "train_s": 10.0} for s, v in ((0, 0.5), (1, 0.6))]
    for strategy, values in (("uncertainty", (0.7, 0.75)), ("random", (0.6, 0.7))):
        for seed, value in enumerate(values):
            records.append(
                {
                    "round": 1,
                    "seed": seed,
                    "strategy": strategy,
                    "test_lwlrap": value,
                    "reviewed": 4,
                    "yes": 2,
                    "no": 1 + seed,
                    "relabelled": 1 - seed,
                    "repeat": seed,
                    "examples": 20,
                    "precompute_s": 1.0,
                    "train_s": 4.0,
                }
            )
    return records


def test_the_comparison_gives_means_spreads_and_the_paired_gain(tmp_path):
    rows = compare(_records(), rounds=1)
    assert [(r["round"], r["strategy"]) for r in rows] == [
        (0, "start (round 0)"),
        (1, "uncertainty"),
        (1, "random"),
    ]
    assert rows[1]["lwlrap"] == pytest.approx((0.725, 0.0353553), abs=1e-6)
    assert rows[1]["paired_gain"] == pytest.approx((0.075, 0.0353553), abs=1e-6)  # +0.1, +0.05
    assert "paired_gain" not in rows[2]
    assert (rows[1]["no"], rows[1]["relabelled"], rows[1]["reviewed"]) == (1.5, 0.5, 4)
    written = write_comparison(rows, tmp_path, cost=None).read_text()
    assert (
        "| 1 | uncertainty | 0.725 ± 0.035 | 0.700, 0.750 | +0.075 ± 0.035 | 4 | 2.0 / 1.5 / 0.5 / 0.5 | 20 | 1.0 | 4 |"
        in written
    )
    assert (
        (tmp_path / "loop.csv").read_text().splitlines()[2].startswith("1,uncertainty,2,0.725000,0.035355,4,")
    )


def test_mean_std_and_the_cost_line():
    assert mean_std([1.0]) == (1.0, 0.0)
    cost = {"examples": 120, "round_precompute_s": 2.0, "round_train_s": 10.0}
    cost |= {"fresh_precompute_s": 6.0, "fresh_train_s": 42.0}
    assert cost_line(cost).endswith("= 48 s; ratio 0.25")
