"""Tests for the human study: pairs, resumable CSV answers, the task widget and the analysis."""

import threading
import time

import numpy as np
import pandas as pd
import pytest

from emojidiff.evaluation.copies import rate_interval
from emojidiff.study.human_study import (
    ANSWER_COLUMNS,
    StudySession,
    StudyWidget,
    bradley_terry,
    load_answers,
    make_pairs,
    plot_study,
    simulate_answers,
    win_rates,
)

SIZES = {"real": 50, "w32": 40, "w64": 30, "w128": 20}


def test_pairs_are_balanced_deterministic_and_prefix_stable():
    p = make_pairs(SIZES, 120, seed=3)
    assert (p["left_source"] != p["right_source"]).all()
    combos = p.apply(lambda r: frozenset([r["left_source"], r["right_source"]]), axis=1).value_counts()
    assert len(combos) == 6 and (combos == 20).all()  # every pair of sources equally often
    assert 0.3 < (p["left_source"] == "real").sum() / (combos.iloc[0] * 3) < 0.7  # sides randomised
    for s, n in SIZES.items():
        assert p.loc[p["left_source"] == s, "left_index"].between(0, n - 1).all()
    pd.testing.assert_frame_equal(p, make_pairs(SIZES, 120, seed=3))
    pd.testing.assert_frame_equal(p.head(10), make_pairs(SIZES, 10, seed=3))  # pair i independent of n_pairs
    assert not p.equals(make_pairs(SIZES, 120, seed=4))
    with pytest.raises(ValueError, match="two sources"):
        make_pairs({"real": 5, "w32": 0}, 3)


def test_answers_are_saved_at_once_and_a_session_resumes(tmp_path):
    csv = tmp_path / "study" / "answers.csv"
    pairs = make_pairs(SIZES, 5)
    s = StudySession(pairs, csv, rater="ann")
    row = s.answer("left")
    assert row["winner"] == pairs.loc[0, "left_source"] and row["loser"] == pairs.loc[0, "right_source"]
    s.answer("right")
    saved = load_answers(csv)  # on disk already, before the session ends
    assert list(saved.columns) == ANSWER_COLUMNS and len(saved) == 2
    assert saved.loc[1, "winner"] == pairs.loc[1, "right_source"] and saved.loc[1, "pair_id"] == "0-1"
    del s  # the notebook is closed ...
    s2 = StudySession(pairs, csv, rater="ann")  # ... and reopened: it goes on at pair 3
    assert s2.done == 2 and s2.current["pair_id"] == pairs.loc[2, "pair_id"]
    assert StudySession(pairs, csv, rater="bob").done == 0  # another rater starts afresh
    for _ in range(3):
        s2.answer("left")
    assert s2.current is None and len(load_answers(csv)) == 5
    with pytest.raises(IndexError):
        s2.answer("left")
    with pytest.raises(ValueError, match="left"):
        StudySession(pairs, csv, rater="bob").answer("middle")
    assert load_answers(tmp_path / "none.csv").empty
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_answers(tmp_path / "bad.csv")


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for s, n in SIZES.items()}


def test_widget_clicks_record_answers(tmp_path):
    pairs = make_pairs(SIZES, 3)
    w = StudyWidget(StudySession(pairs, tmp_path / "a.csv"), _images(), min_seconds=0.0)
    first = w.left_img.value
    assert w.progress.value == 0 and "0 of 3" in w.status.value
    w.right_btn.click()  # the same path as a real click
    assert len(load_answers(tmp_path / "a.csv")) == 1 and w.progress.value == 1
    assert w.left_img.value != first
    w.left_btn.click()
    w.left_btn.click()
    assert w.left_btn.disabled and "done: 3 of 3" in w.status.value
    got = load_answers(tmp_path / "a.csv")["choice"].tolist()
    assert got == ["right", "left", "left"]


def test_widget_ignores_a_double_click_and_answers_from_the_keyboard(tmp_path):
    csv = tmp_path / "a.csv"
    w = StudyWidget(StudySession(make_pairs(SIZES, 4), csv), _images(), min_seconds=0.3)
    time.sleep(0.35)  # the rater looks at the first pair
    w.left_btn.click()
    second = w.left_img.value
    w.left_btn.click()  # the second click of a double-click lands on a pair drawn a moment ago
    assert len(load_answers(csv)) == 1 and w.session.done == 1 and w.left_img.value == second
    time.sleep(0.35)
    # what ipyevents delivers for a key press over the widget: the right arrow, then "1"
    w.keys._handle_mouse_msg(None, {"type": "keydown", "key": "ArrowRight"}, [])
    time.sleep(0.35)
    w.keys._handle_mouse_msg(None, {"type": "keydown", "key": "1"}, [])
    w.keys._handle_mouse_msg(None, {"type": "keydown", "key": "x"}, [])  # other keys do nothing
    assert load_answers(csv)["choice"].tolist() == ["left", "right", "left"]


def test_a_double_click_on_two_kernel_threads_records_one_answer(tmp_path):
    # JupyterLab's kernel (ipykernel subshells) handled the two clicks of a double-click on two threads at once:
    # both passed the check and both answered the same pair
    csv = tmp_path / "a.csv"
    w = StudyWidget(StudySession(make_pairs(SIZES, 20), csv), _images(), min_seconds=0.2)
    for _ in range(5):
        time.sleep(0.25)
        start = threading.Barrier(2)
        threads = [threading.Thread(target=lambda b=start: (b.wait(), w.left_btn.click())) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    got = load_answers(csv)
    assert len(got) == 5 and got["pair_id"].is_unique


def test_a_torn_answers_file_loses_nothing_and_takes_new_answers(tmp_path):
    csv = tmp_path / "answers.csv"
    pairs = make_pairs(SIZES, 8)
    s = StudySession(pairs, csv, rater="ann")
    for side in ["left", "right", "left", "right"]:
        s.answer(side)
    data = csv.read_bytes()
    csv.write_bytes(data[: data.rstrip(b"\n").rfind(b",w")])  # a crash mid-row: the 4th answer is torn
    with pytest.warns(UserWarning, match=r"skipped 1 row.*line 5: \d+ fields"):
        s2 = StudySession(pairs, csv, rater="ann")  # starting a session works ...
    assert s2.done == 3 and s2.current["pair_id"] == pairs.loc[3, "pair_id"]  # ... and asks the torn pair again
    s2.answer("left")
    s2.answer("right")
    lines = csv.read_text().splitlines()
    assert len(lines) == 1 + 4 + 2 and lines[-2].count(",") == lines[-1].count(",") == len(ANSWER_COLUMNS) - 1
    with pytest.warns(UserWarning, match="line 5"):
        got = load_answers(csv)
    assert len(got) == 5 and got["pair_id"].tolist() == ["0-0", "0-1", "0-2", "0-3", "0-4"]
    assert got["choice"].tolist() == ["left", "right", "left", "left", "right"]
    with pytest.warns(UserWarning):
        bt = bradley_terry(load_answers(csv), sources=SIZES)
    assert np.isfinite(bt["log_strength"]).all() and set(bt.index) <= set(SIZES)


def test_a_row_torn_inside_a_quoted_rater_does_not_swallow_later_rows(tmp_path):
    csv = tmp_path / "answers.csv"
    pairs = make_pairs(SIZES, 5)
    s = StudySession(pairs, csv, rater='Doe, "JD" Jane')  # written quoted
    s.answer("left")
    s.answer("right")
    data = csv.read_bytes()
    csv.write_bytes(data[: data.rindex(b'"Doe') + 6])  # torn after the opening quote of the last row's rater
    with pytest.warns(UserWarning, match="line 3"):
        s = StudySession(pairs, csv, rater='Doe, "JD" Jane')
    s.answer("left")
    s.answer("left")
    with pytest.warns(UserWarning, match=r"skipped 1 row.*line 3"):
        got = load_answers(csv)
    assert got["pair_id"].tolist() == ["0-0", "0-1", "0-2"] and set(got["rater"]) == {'Doe, "JD" Jane'}


def test_a_torn_header_starts_the_file_again(tmp_path):
    csv = tmp_path / "answers.csv"
    csv.write_text("time,rater,pai")
    StudySession(make_pairs(SIZES, 2), csv).answer("left")
    assert len(load_answers(csv)) == 1


def test_an_unknown_source_is_rejected_not_ranked(tmp_path):
    csv = tmp_path / "answers.csv"
    s = StudySession(make_pairs(SIZES, 3), csv)
    s.answer("left")
    with open(csv, "a") as f:  # a consistent row for a source that is not in the study
        f.write("t,anonymous,9-9,w999,0,real,1,left,w999,real,0.5\n")
    with pytest.warns(UserWarning, match=r"line 3: source 'w999' is not one of the study's"):
        good = load_answers(csv, sources=SIZES)
    assert len(good) == 1
    with pytest.warns(UserWarning, match="line 3"):
        assert StudySession(make_pairs(SIZES, 3), csv).done == 1
    everything = load_answers(csv)  # without the study's sources the row parses ...
    with pytest.raises(ValueError, match=r"\['w999'\] not among the study's sources"):
        bradley_terry(everything, sources=SIZES)  # ... but the fit refuses it
    with pytest.raises(ValueError, match="missing or non-text winner"):
        bradley_terry(everything.assign(winner=[np.nan, "real"]))  # not a TypeError deep in sorted()


def test_wilson_interval_known_values():
    lo, hi = rate_interval(8, 10)  # the one Wilson interval, which win_rates uses
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = rate_interval(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.1611, abs=1e-4)


def test_bradley_terry_recovers_known_strengths():
    truth = {"real": 4.0, "w128": 2.0, "w64": 1.0, "w32": 0.5}
    answers = simulate_answers(make_pairs(SIZES, 6000, seed=1), truth, seed=2)
    bt = bradley_terry(answers, prior=0.0)
    assert list(bt.index) == ["real", "w128", "w64", "w32"] and list(bt["rank"]) == [1, 2, 3, 4]
    log_truth = np.log(pd.Series(truth))
    log_truth -= log_truth.mean()
    np.testing.assert_allclose(bt["log_strength"], log_truth[bt.index], atol=0.12)
    # the MM fixed point is the maximum-likelihood estimate: expected wins equal observed wins (score equations)
    p = bt["strength"]
    exp_wins = pd.Series(0.0, index=p.index)
    for w, l in zip(answers["winner"], answers["loser"]):
        exp_wins[w] += p[w] / (p[w] + p[l])
        exp_wins[l] += p[l] / (p[w] + p[l])
    np.testing.assert_allclose(exp_wins[p.index], answers["winner"].value_counts()[p.index], rtol=1e-6)


def test_win_rates_and_plot():
    answers = simulate_answers(make_pairs({"real": 5, "w32": 5}, 40), {"real": 1.0, "w32": 1.0})
    wr = win_rates(answers)
    assert wr["comparisons"].tolist() == [40, 40] and wr["wins"].sum() == 40
    assert ((wr["ci_low"] <= wr["win_rate"]) & (wr["win_rate"] <= wr["ci_high"])).all()
    unbeaten = answers.assign(winner="real", loser="w32")
    assert np.isfinite(bradley_terry(unbeaten)["log_strength"]).all()  # the prior keeps a sweep finite
    assert len(plot_study(answers).axes) == 2
    with pytest.raises(ValueError, match="two sources"):
        bradley_terry(answers.head(0))


def test_bradley_terry_bootstrap_intervals():
    truth = {"real": 4.0, "w128": 2.0, "w64": 1.0, "w32": 0.5}
    big = simulate_answers(make_pairs(SIZES, 3000, seed=1), truth, seed=2)
    bt = bradley_terry(big, n_boot=400, seed=5)
    assert (bt["strength_lo"] < bt["strength"]).all() and (bt["strength"] < bt["strength_hi"]).all()
    g = np.exp(np.log(pd.Series(truth)).mean())  # truth on the fit's scale (geometric mean 1)
    true = pd.Series(truth)[bt.index] / g
    assert ((bt["strength_lo"] < true) & (true < bt["strength_hi"])).all()
    pd.testing.assert_frame_equal(bt, bradley_terry(big, n_boot=400, seed=5))  # seeded
    assert not bt["strength_lo"].equals(bradley_terry(big, n_boot=400, seed=6)["strength_lo"])
    small = bradley_terry(big.head(300), n_boot=400, seed=5)
    width = np.log(bt["strength_hi"] / bt["strength_lo"])
    assert (np.log(small["strength_hi"] / small["strength_lo"])[bt.index] > 2 * width).all()  # 10x data: ~3x narrower
    assert "strength_lo" not in bradley_terry(big, n_boot=0)


def test_a_tie_shares_a_rank_and_draws_a_ranking():
    answers = simulate_answers(make_pairs({"real": 5, "w32": 5}, 6), {"real": 1.0, "w32": 1.0})
    answers["winner"] = ["real", "w32"] * 3  # 3-3
    answers["loser"] = ["w32", "real"] * 3
    bt = bradley_terry(answers)
    assert bt["rank"].tolist() == [1, 1] and np.allclose(bt["strength"], 1.0)
    ax = plot_study(answers).axes[1]
    assert sorted(t.get_text() for t in ax.get_xticklabels()) == ["#1 real", "#1 w32"]
    x, y = ax.lines[0].get_data()  # the strength points, one per source, inside the visible range
    lo, hi = ax.get_ylim()
    assert len(x) == 2 and all(lo < v < hi for v in y)


def test_a_failed_write_leaves_the_buttons_usable_and_the_pair_unanswered(tmp_path, monkeypatch):
    w = StudyWidget(StudySession(make_pairs(SIZES, 3), tmp_path / "a.csv"), _images(), min_seconds=0.0)

    def full_disk(side):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(w.session, "answer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        w.choose("left")
    assert not w.left_btn.disabled and not w.right_btn.disabled and w.session.done == 0
