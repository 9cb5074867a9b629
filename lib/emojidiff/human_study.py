"""Human preference study: a two-alternative task ("which looks more like a real emoji?") and its analysis."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

PAIR_COLUMNS = ["pair_id", "left_source", "left_index", "right_source", "right_index"]
ANSWER_COLUMNS = ["time", "rater", *PAIR_COLUMNS, "choice", "winner", "loser", "seconds"]


def make_pairs(source_sizes: dict[str, int], n_pairs: int, seed: int = 0) -> pd.DataFrame:
    """Pairs of images from two different sources, source pairs balanced, images and sides random."""
    sources = [s for s, n in source_sizes.items() if n > 0]
    if len(sources) < 2:
        raise ValueError(f"need images from at least two sources, got {source_sizes}")
    combos = [(a, b) for i, a in enumerate(sources) for b in sources[i + 1:]]
    rows = []
    for i in range(n_pairs):
        rng = np.random.default_rng([seed, i])  # pair i does not depend on n_pairs, so sessions resume
        block = np.random.default_rng([seed, i // len(combos), 1]).permutation(len(combos))
        a, b = combos[block[i % len(combos)]]  # every source pair once per block, in a random order
        if rng.random() < 0.5:
            a, b = b, a
        rows.append((f"{seed}-{i}", a, int(rng.integers(source_sizes[a])), b, int(rng.integers(source_sizes[b]))))
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def load_answers(path: str | Path) -> pd.DataFrame:
    """All answers in a study CSV (an empty table when there is none yet)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=ANSWER_COLUMNS)
    df = pd.read_csv(path, dtype={"pair_id": str, "rater": str})
    missing = set(ANSWER_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a study answers file, missing columns {sorted(missing)}")
    return df


class StudySession:
    """One rater's pass through the pairs; every answer is appended to the CSV at once, and a new session resumes."""

    def __init__(self, pairs: pd.DataFrame, csv_path: str | Path, rater: str = "anonymous"):
        self.csv_path, self.rater = Path(csv_path), str(rater)
        done = load_answers(self.csv_path)
        done = set(done.loc[done["rater"] == self.rater, "pair_id"].astype(str))
        self.total = len(pairs)
        self.queue = [r for r in pairs.to_dict("records") if str(r["pair_id"]) not in done]
        self._shown_at = time.monotonic()

    @property
    def done(self) -> int:
        return self.total - len(self.queue)

    @property
    def current(self) -> dict | None:
        """The pair to judge now, or None when the session is complete."""
        return self.queue[0] if self.queue else None

    def answer(self, choice: str) -> dict:
        """Record that the "left" or "right" image looks more like a real emoji, then move on."""
        if choice not in ("left", "right"):
            raise ValueError(f"choice must be 'left' or 'right', got {choice!r}")
        pair = self.current
        if pair is None:
            raise IndexError("the session is complete: no pair left to answer")
        winner, loser = (pair["left_source"], pair["right_source"])[:: 1 if choice == "left" else -1]
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rater": self.rater, **pair, "choice": choice,
               "winner": winner, "loser": loser, "seconds": round(time.monotonic() - self._shown_at, 2)}
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.csv_path.is_file() or self.csv_path.stat().st_size == 0
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, ANSWER_COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())  # a closed notebook or a crash loses nothing
        self.queue.pop(0)
        self._shown_at = time.monotonic()
        return row


class StudyWidget:
    """The 2AFC task in ipywidgets: two emoji side by side, sources hidden, one click per answer."""

    def __init__(self, session: StudySession, images: dict[str, np.ndarray], scale: int = 4):
        import ipywidgets as W

        self.session, self.images, self.scale = session, images, scale
        self.question = W.HTML("<h3>Which looks more like a real emoji?</h3>")
        self.left_img, self.right_img = W.Image(format="png"), W.Image(format="png")
        self.left_btn = W.Button(description="this one (left)", button_style="info")
        self.right_btn = W.Button(description="this one (right)", button_style="info")
        self.progress = W.IntProgress(min=0, max=max(session.total, 1))
        self.status = W.HTML()
        self.left_btn.on_click(lambda _: self.choose("left"))
        self.right_btn.on_click(lambda _: self.choose("right"))
        self.widget = W.VBox([self.question,
                              W.HBox([W.VBox([self.left_img, self.left_btn]),
                                      W.VBox([self.right_img, self.right_btn])]),
                              W.HBox([self.progress, self.status])])
        self.render()

    def choose(self, side: str):
        """What a click does: record the answer and show the next pair."""
        self.session.answer(side)
        self.render()

    def render(self):
        from emojidiff.browser import png_bytes

        s = self.session
        self.progress.value = s.done
        pair = s.current
        self.left_btn.disabled = self.right_btn.disabled = pair is None
        if pair is None:
            self.status.value = f"done: {s.done} of {s.total} answered, saved to {s.csv_path}. Thank you!"
            return
        self.status.value = f"{s.done} of {s.total} answered (saved as you go; rater {s.rater})"
        self.left_img.value = png_bytes(self.images[pair["left_source"]][pair["left_index"]], self.scale)
        self.right_img.value = png_bytes(self.images[pair["right_source"]][pair["right_index"]], self.scale)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def wilson(k, n, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes in n trials."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def win_rates(answers: pd.DataFrame) -> pd.DataFrame:
    """Per source: comparisons, wins, win rate and its 95% Wilson interval."""
    wins = answers["winner"].value_counts()
    games = pd.concat([answers["winner"], answers["loser"]]).value_counts()
    df = pd.DataFrame({"comparisons": games, "wins": wins.reindex(games.index, fill_value=0)})
    df["win_rate"] = df["wins"] / df["comparisons"]
    df["ci_low"], df["ci_high"] = wilson(df["wins"], df["comparisons"])
    df.index.name = "source"
    return df.sort_values("win_rate", ascending=False)


def bradley_terry(answers: pd.DataFrame, prior: float = 0.5, iters: int = 10_000, tol: float = 1e-10) -> pd.DataFrame:
    """Bradley-Terry strengths by the MM algorithm (Hunter 2004): P(i beats j) = p_i / (p_i + p_j)."""
    sources = sorted(set(answers["winner"]) | set(answers["loser"]))
    if len(sources) < 2:
        raise ValueError("Bradley-Terry needs answers comparing at least two sources")
    pos = {s: i for i, s in enumerate(sources)}
    m = len(sources)
    w = np.zeros((m, m))  # w[i, j]: times i beat j
    np.add.at(w, (answers["winner"].map(pos).to_numpy(), answers["loser"].map(pos).to_numpy()), 1)
    n = w + w.T
    w = w + prior * (n > 0)  # pseudo-wins both ways keep unbeaten/winless sources finite
    n = w + w.T
    p = np.ones(m)
    for _ in range(iters):
        new = w.sum(1) / (n / (p[:, None] + p[None, :])).sum(1)  # Hunter (2004) eq. 3
        new /= np.exp(np.log(new).mean())  # fix the scale: geometric mean 1
        if np.abs(new - p).max() < tol:
            p = new
            break
        p = new
    df = pd.DataFrame({"strength": p, "log_strength": np.log(p)}, index=pd.Index(sources, name="source"))
    df = df.sort_values("strength", ascending=False)
    df["rank"] = np.arange(1, m + 1)
    return df


def simulate_answers(pairs: pd.DataFrame, strengths: dict[str, float], seed: int = 0,
                     rater: str = "simulated") -> pd.DataFrame:
    """Answers of a simulated rater following a Bradley-Terry model with the given strengths (for tests, demos)."""
    rng = np.random.default_rng(seed)
    pl = pairs["left_source"].map(strengths).to_numpy(float)
    pr = pairs["right_source"].map(strengths).to_numpy(float)
    left = rng.random(len(pairs)) < pl / (pl + pr)
    df = pairs.copy()
    df.insert(0, "rater", rater)
    df.insert(0, "time", "")
    df["choice"] = np.where(left, "left", "right")
    df["winner"] = np.where(left, pairs["left_source"], pairs["right_source"])
    df["loser"] = np.where(left, pairs["right_source"], pairs["left_source"])
    df["seconds"] = np.nan
    return df[ANSWER_COLUMNS]


def plot_study(answers: pd.DataFrame, title: str = "Which looks more like a real emoji?"):
    """Win rates with Wilson intervals and the Bradley-Terry strengths, per source."""
    import matplotlib.pyplot as plt

    wr, bt = win_rates(answers), bradley_terry(answers)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax0.errorbar(wr.index, wr["win_rate"], yerr=[wr["win_rate"] - wr["ci_low"], wr["ci_high"] - wr["win_rate"]],
                 fmt="o", capsize=4)
    ax0.axhline(0.5, color="k", ls=":", lw=1)
    ax0.set_ylim(0, 1)
    ax0.set_ylabel("win rate (95% Wilson CI)")
    ax0.set_title(f"{title}\n{len(answers)} answers", fontsize=9)
    ax1.bar(bt.index, bt["log_strength"])
    ax1.set_ylabel("Bradley-Terry log-strength")
    ax1.set_title("ranking (higher: judged more real)", fontsize=9)
    fig.tight_layout()
    return fig
