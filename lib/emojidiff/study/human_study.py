"""Human preference study: a two-alternative task ("which looks more like a real emoji?") and its analysis."""

from __future__ import annotations

import csv
import io
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from emojidiff.evaluation.copies import rate_interval
from emojidiff.images import png_bytes

PAIR_COLUMNS = ["pair_id", "left_source", "left_index", "right_source", "right_index"]
ANSWER_COLUMNS = ["time", "rater", *PAIR_COLUMNS, "choice", "winner", "loser", "seconds"]
HEADER = (",".join(ANSWER_COLUMNS) + "\n").encode()


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


def _parse_row(fields: list[str], sources: set[str] | None) -> dict:
    """One answer row as typed values; raises ValueError saying what is wrong with it."""
    if len(fields) != len(ANSWER_COLUMNS):
        raise ValueError(f"{len(fields)} fields, expected {len(ANSWER_COLUMNS)}")
    row = dict(zip(ANSWER_COLUMNS, fields))
    if row["choice"] not in ("left", "right"):
        raise ValueError(f"choice {row['choice']!r} is not 'left' or 'right'")
    shown = (row["left_source"], row["right_source"])[:: 1 if row["choice"] == "left" else -1]
    if (row["winner"], row["loser"]) != shown:  # a torn or glued row rarely keeps these consistent
        raise ValueError(f"winner {row['winner']!r} / loser {row['loser']!r} do not match the pair shown "
                         f"({row['left_source']!r} left, {row['right_source']!r} right, chose {row['choice']})")
    if sources is not None:
        unknown = sorted({row["winner"], row["loser"]} - sources)
        if unknown:
            raise ValueError(f"source {', '.join(map(repr, unknown))} is not one of the study's {sorted(sources)}")
    row["left_index"], row["right_index"] = int(row["left_index"]), int(row["right_index"])
    row["seconds"] = float(row["seconds"]) if row["seconds"] else np.nan
    return row


def load_answers(path: str | Path, sources=None) -> pd.DataFrame:
    """All answers in a study CSV (an empty table when there is none yet).

    Rows that do not parse (a torn last line, a row glued onto it, a winner that is not one of `sources`) are skipped
    with a warning naming their line numbers; every good row is kept.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size < len(HEADER) and HEADER.startswith(path.read_bytes()):
        return pd.DataFrame(columns=ANSWER_COLUMNS)  # nothing yet, or a header torn by a crash: no answers lost
    sources = None if sources is None else set(sources)
    rows, bad = [], []
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    header = next(csv.reader(lines[:1]), [])
    missing = set(ANSWER_COLUMNS) - set(header)
    if missing:
        raise ValueError(f"{path}: not a study answers file, missing columns {sorted(missing)}")
    order = [header.index(c) for c in ANSWER_COLUMNS]
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:  # line by line: an open quote on a torn row must not swallow the rows after it
            fields = next(csv.reader([line], strict=True))
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, expected {len(header)}")
            rows.append(_parse_row([fields[i] for i in order], sources))
        except (ValueError, csv.Error) as e:
            bad.append(f"line {number}: {e}")
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} row(s) that do not parse, kept {len(rows)}: " + "; ".join(bad),
                      stacklevel=2)
    df = pd.DataFrame(rows, columns=ANSWER_COLUMNS)
    return df.astype({"left_index": int, "right_index": int, "seconds": float})


class StudySession:
    """One rater's pass through the pairs; every answer is appended to the CSV at once, and a new session resumes."""

    def __init__(self, pairs: pd.DataFrame, csv_path: str | Path, rater: str = "anonymous"):
        self.csv_path, self.rater = Path(csv_path), str(rater)
        self.sources = sorted(set(pairs["left_source"]) | set(pairs["right_source"]))
        done = load_answers(self.csv_path, self.sources)
        done = set(done.loc[done["rater"] == self.rater, "pair_id"].astype(str))
        self.total = len(pairs)
        self.queue = [r for r in pairs.to_dict("records") if str(r["pair_id"]) not in done]
        self._shown_at = time.monotonic()
        self._lock = threading.Lock()  # JupyterLab's kernel handles widget messages on several threads

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
        with self._lock:
            return self._answer(choice)

    def _answer(self, choice: str) -> dict:
        pair = self.current
        if pair is None:
            raise IndexError("the session is complete: no pair left to answer")
        winner, loser = (pair["left_source"], pair["right_source"])[:: 1 if choice == "left" else -1]
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rater": self.rater, **pair, "choice": choice,
               "winner": winner, "loser": loser, "seconds": round(time.monotonic() - self._shown_at, 2)}
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.csv_path, "a+b") as f:  # bytes: seek to the last character and read it
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            torn_header = 0 < size < len(HEADER) and HEADER.startswith(f.read(size))
            if size == 0 or torn_header:  # a crash while the header was written: start the file again
                f.truncate(0)
                f.write(HEADER)
            else:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # a torn last row: start this answer on a fresh line
                    f.write(b"\n")
            text = io.StringIO()
            csv.DictWriter(text, ANSWER_COLUMNS, lineterminator="\n").writerow(row)
            f.write(text.getvalue().encode())  # one write: a crash tears at most this row
            f.flush()
            os.fsync(f.fileno())  # a closed notebook or a crash loses nothing
        self.queue.pop(0)
        self._shown_at = time.monotonic()
        return row


KEYS = {"ArrowLeft": "left", "1": "left", "ArrowRight": "right", "2": "right"}


class StudyWidget:
    """The 2AFC task in ipywidgets: two emoji side by side, sources hidden; a click or a key (left/right, 1/2) answers.

    A click or key within `min_seconds` of a pair being drawn is ignored: the second click of a double-click (or a
    held key) would otherwise answer a pair nobody has looked at yet.
    """

    def __init__(self, session: StudySession, images: dict[str, np.ndarray], scale: int = 4,
                 min_seconds: float = 0.5):
        import ipywidgets as W
        from ipyevents import Event

        self.session, self.images, self.scale, self.min_seconds = session, images, scale, min_seconds
        # the two clicks of a double-click can arrive on two threads at once (JupyterLab's kernel subshells)
        self._lock = threading.Lock()
        self.question = W.HTML("<h3>Which looks more like a real emoji?</h3>"
                               "<span style='font-size:11px'>click, or with the mouse over the task press "
                               "&larr; / &rarr; (or 1 / 2)</span>")
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
        # ipywidgets has no key events; ipyevents sends them while the mouse is over the task
        self.keys = Event(source=self.widget, watched_events=["keydown"], prevent_default_action=True)
        self.keys.on_dom_event(self._on_key)
        self.render()

    def _on_key(self, event: dict):
        side = KEYS.get(event.get("key"))
        if event.get("type") == "keydown" and side is not None:
            self.choose(side)

    def choose(self, side: str) -> dict | None:
        """What a click does: record the answer and show the next pair; None when the click is ignored."""
        with self._lock:
            if self.session.current is None:
                return None
            if time.monotonic() - self._drawn_at < self.min_seconds:
                return None  # the pair was drawn a moment ago: a double-click's second click, not an answer
            self.left_btn.disabled = self.right_btn.disabled = True  # no more clicks on this pair
            try:
                return self.session.answer(side)
            finally:  # the next pair, or this one again if the answer could not be written (buttons re-enabled)
                self.render()

    def render(self):
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
        self._drawn_at = time.monotonic()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)



def win_rates(answers: pd.DataFrame) -> pd.DataFrame:
    """Per source: comparisons, wins, win rate and its 95% Wilson interval."""
    wins = answers["winner"].value_counts()
    games = pd.concat([answers["winner"], answers["loser"]]).value_counts()
    df = pd.DataFrame({"comparisons": games, "wins": wins.reindex(games.index, fill_value=0)})
    df["win_rate"] = df["wins"] / df["comparisons"]
    ci = [rate_interval(int(k), int(n)) for k, n in zip(df["wins"], df["comparisons"])]
    df["ci_low"], df["ci_high"] = [c[0] for c in ci], [c[1] for c in ci]
    df.index.name = "source"
    return df.sort_values("win_rate", ascending=False)


def _check_sources(answers: pd.DataFrame, sources) -> list[str]:
    """The sources the answers compare, after checking every winner and loser is a known source name."""
    names = pd.concat([answers["winner"], answers["loser"]])
    bad = names[~names.map(lambda v: isinstance(v, str) and v != "")]
    if len(bad):
        raise ValueError(f"answers with a missing or non-text winner/loser: {sorted(map(repr, set(bad)))[:5]}")
    found = sorted(set(names))
    if sources is not None:
        unknown = sorted(set(found) - set(sources))
        if unknown:
            raise ValueError(f"winner/loser {unknown} not among the study's sources {sorted(sources)}")
    return found


def _mm(w: np.ndarray, prior: float, iters: int, tol: float) -> np.ndarray:
    """Bradley-Terry MM fit (Hunter 2004) of win matrices w[..., i, j] (times i beat j), batched over leading axes."""
    n = w + np.swapaxes(w, -1, -2)
    w = w + prior * (n > 0)  # pseudo-wins both ways keep unbeaten/winless sources finite
    n = w + np.swapaxes(w, -1, -2)
    p = np.ones(w.shape[:-1])
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: a resample that compares nothing
        for _ in range(iters):
            new = w.sum(-1) / (n / (p[..., :, None] + p[..., None, :])).sum(-1)  # Hunter (2004) eq. 3
            logs = np.where(new > 0, np.log(new), np.nan)  # a source never compared (in a resample) is NaN
            new = new / np.exp(np.nanmean(logs, axis=-1, keepdims=True))  # fix the scale: geometric mean 1
            done = np.nanmax(np.abs(new - p)) < tol if np.isfinite(new).any() else True
            p = new
            if done:
                break
    return p


def bradley_terry(answers: pd.DataFrame, prior: float = 0.5, iters: int = 10_000, tol: float = 1e-10,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0, sources=None) -> pd.DataFrame:
    """Bradley-Terry strengths by the MM algorithm (Hunter 2004): P(i beats j) = p_i / (p_i + p_j).

    `strength_lo`/`strength_hi`: a percentile bootstrap interval (answers resampled with replacement, seeded).
    `rank`: 1 is judged most real; equal strengths (a 3-3 tie) share a rank. With `sources`, an unknown winner or
    loser is an error rather than a new source.
    """
    names = _check_sources(answers, sources)
    if len(names) < 2:
        raise ValueError("Bradley-Terry needs answers comparing at least two sources")
    pos = {s: i for i, s in enumerate(names)}
    m = len(names)
    w = np.zeros((m, m))  # w[i, j]: times i beat j
    np.add.at(w, (answers["winner"].map(pos).to_numpy(), answers["loser"].map(pos).to_numpy()), 1)
    p = _mm(w, prior, iters, tol)
    df = pd.DataFrame({"strength": p, "log_strength": np.log(p)}, index=pd.Index(names, name="source"))
    if n_boot > 0:
        # resampling answers with replacement = multinomial counts over the (winner, loser) cells
        rng = np.random.default_rng(seed)
        boot = rng.multinomial(int(w.sum()), w.ravel() / w.sum(), size=n_boot).reshape(n_boot, m, m).astype(float)
        pb = _mm(boot, prior, iters, max(tol, 1e-8))
        alpha = (1 - level) / 2
        df["strength_lo"] = np.nanquantile(pb, alpha, axis=0)
        df["strength_hi"] = np.nanquantile(pb, 1 - alpha, axis=0)
    df = df.sort_values("strength", ascending=False, kind="stable")
    # ties share a rank: compare strengths rounded well above the fit's tolerance
    df["rank"] = df["log_strength"].round(6).rank(method="min", ascending=False).astype(int)
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
    """Win rates with Wilson intervals and the Bradley-Terry strengths (bootstrap intervals) in rank order."""
    import matplotlib.pyplot as plt

    wr, bt = win_rates(answers), bradley_terry(answers)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax0.errorbar(wr.index, wr["win_rate"], yerr=[wr["win_rate"] - wr["ci_low"], wr["ci_high"] - wr["win_rate"]],
                 fmt="o", capsize=4)
    ax0.axhline(0.5, color="k", ls=":", lw=1)
    ax0.set_ylim(0, 1)
    ax0.set_ylabel("win rate (95% Wilson CI)")
    ax0.set_title(f"{title}\n{len(answers)} answers", fontsize=9)
    # points, not bars from 1: a tie (all strengths 1) must still show every source
    labels = [f"#{r} {s}" for s, r in zip(bt.index, bt["rank"])]
    lo = (bt["strength"] - bt["strength_lo"]).clip(lower=0)
    hi = (bt["strength_hi"] - bt["strength"]).clip(lower=0)
    ax1.errorbar(labels, bt["strength"], yerr=[lo.fillna(0), hi.fillna(0)], fmt="o", capsize=4)
    ax1.axhline(1.0, color="k", ls=":", lw=1)
    ax1.set_yscale("log")
    ax1.set_ylabel("Bradley-Terry strength (95% bootstrap CI)")
    ax1.set_title("ranking (higher: judged more real; geometric mean 1)", fontsize=9)
    fig.tight_layout()
    return fig
