"""Tests for the human study: pairs, resumable CSV answers, the task widget and the analysis."""

import numpy as np
import pandas as pd
import pytest

from emojidiff.human_study import (
    ANSWER_COLUMNS,
    StudySession,
    StudyWidget,
    bradley_terry,
    load_answers,
    make_pairs,
    plot_study,
    simulate_answers,
    wilson,
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


def test_widget_clicks_record_answers(tmp_path):
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for s, n in SIZES.items()}
    pairs = make_pairs(SIZES, 3)
    w = StudyWidget(StudySession(pairs, tmp_path / "a.csv"), images)
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


def test_wilson_interval_known_values():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson(0, 20)
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
