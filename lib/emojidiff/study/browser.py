"""A nearest-neighbour browser: a sample enlarged beside its k nearest training and held-out fusions."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from emojidiff.data.dataset import describe
from emojidiff.evaluation.metrics import nearest_k
from emojidiff.images import png_bytes


def _name(manifest: pd.DataFrame | None, index) -> str:
    """A neighbour's parents ("face A + face B"), or its image number without a manifest."""
    return f"image {int(index)}" if manifest is None else describe(manifest, index)


class NeighbourBrowser:
    """The browser's state and logic, no widgets: filter by width and min-MSE range, select, read what is shown."""

    def __init__(self, samples: np.ndarray, train: np.ndarray, train_manifest: pd.DataFrame | None = None,
                 holdout: np.ndarray | None = None, holdout_manifest: pd.DataFrame | None = None,
                 widths=None, k: int = 5):
        if len(samples) == 0:
            raise ValueError("the browser needs at least one sample")
        self.samples, self.train, self.holdout = samples, train, holdout
        self.train_manifest, self.holdout_manifest = train_manifest, holdout_manifest
        self.widths = np.zeros(len(samples), int) if widths is None else np.asarray(widths)
        if len(self.widths) != len(samples):
            raise ValueError(f"{len(self.widths)} widths for {len(samples)} samples")
        self.k = min(k, len(train))
        self.train_mse, self.train_idx = nearest_k(samples, train, self.k)
        self.has_holdout = holdout is not None and len(holdout) > 0
        if self.has_holdout:
            kh = min(k, len(holdout))
            self.holdout_mse, self.holdout_idx = nearest_k(samples, holdout, kh)
        self.min_mse = self.train_mse[:, 0]
        self.width: int | None = None  # None: all widths
        self.mse_range = (0.0, float(self.min_mse.max()))
        self.position = 0
        self._refilter()

    @property
    def available_widths(self) -> list[int]:
        return sorted({int(w) for w in self.widths})

    def _refilter(self):
        lo, hi = self.mse_range
        keep = (self.min_mse >= lo) & (self.min_mse <= hi)
        if self.width is not None:
            keep &= self.widths == self.width
        # candidates sorted by min-MSE so the slider walks from copies to novel samples
        idx = np.flatnonzero(keep)
        self.candidates = idx[np.argsort(self.min_mse[idx], kind="stable")]
        self.position = min(self.position, max(len(self.candidates) - 1, 0))

    def set_width(self, width: int | None):
        """Show only samples of one width (None: all)."""
        if width is not None and width not in self.available_widths:
            raise ValueError(f"no samples of width {width} (have {self.available_widths})")
        self.width = width
        self._refilter()

    def set_mse_range(self, lo: float, hi: float):
        """Show only samples whose minimum MSE to the training set lies in [lo, hi]."""
        if lo > hi:
            raise ValueError(f"empty MSE range [{lo}, {hi}]")
        self.mse_range = (float(lo), float(hi))
        self._refilter()

    def select(self, position: int):
        """Select the position-th candidate (in order of increasing min-MSE)."""
        if not 0 <= position < max(len(self.candidates), 1):
            raise IndexError(f"position {position} outside 0..{len(self.candidates) - 1}")
        self.position = int(position)

    @property
    def selected(self) -> int | None:
        """The index of the selected sample, or None when the filter leaves nothing."""
        return int(self.candidates[self.position]) if len(self.candidates) else None

    def view(self) -> dict:
        """What the browser shows now: the sample, its neighbours with MSE and captions."""
        i = self.selected
        if i is None:
            return {"sample": None, "caption": "no sample in this filter", "train": [], "holdout": []}
        out = {
            "sample": i,
            "position": self.position + 1,  # counted from 1, as the slider shows it
            "count": len(self.candidates),
            "caption": f"sample {self.position + 1} of {len(self.candidates)} (from near copies to the most novel): "
                       f"image {i} of width {self.widths[i]}, min MSE {self.min_mse[i]:.4f}",
            "train": [(int(n), float(m), _name(self.train_manifest, n))
                      for n, m in zip(self.train_idx[i], self.train_mse[i])],
            "holdout": [],
        }
        if self.has_holdout:
            out["holdout"] = [(int(n), float(m), _name(self.holdout_manifest, n))
                              for n, m in zip(self.holdout_idx[i], self.holdout_mse[i])]
        return out


def _tile(image: np.ndarray, caption: str, scale: int):
    import ipywidgets as W

    return W.VBox([W.Image(value=png_bytes(image, scale), format="png"),
                   W.HTML(f"<div style='font-size:10px;line-height:1.2;width:{image.shape[1] * scale}px'>"
                          f"{caption}</div>")])


class BrowserWidget:
    """ipywidgets front end of a NeighbourBrowser: width dropdown, MSE range, sample slider, image rows."""

    def __init__(self, browser: NeighbourBrowser, scale: int = 3, sample_scale: int = 6):
        import ipywidgets as W

        self.b, self.scale, self.sample_scale = browser, scale, sample_scale
        # JupyterLab's kernel may handle widget messages on several threads; one change at a time, re-entrant
        # because a filter change moves the slider
        self._lock = threading.RLock()
        # "all" rather than None: a Dropdown shows a None value as an empty box
        self.width = W.Dropdown(options=["all"] + [str(w) for w in browser.available_widths], value="all",
                                description="width")
        hi = float(browser.min_mse.max())
        self.mse = W.FloatRangeSlider(value=(0.0, hi), min=0.0, max=hi, step=hi / 200 or 1e-4,
                                      description="min MSE", readout_format=".3f", continuous_update=False,
                                      layout=W.Layout(width="420px"))
        # counts from 1 like the caption; wide enough to reach every one of hundreds of samples
        self.slider = W.IntSlider(value=1, min=1, max=max(len(browser.candidates), 1), description="sample",
                                  layout=W.Layout(width="100%", min_width="600px"))
        self.caption = W.HTML()
        self.sample_box, self.train_box, self.holdout_box = W.HBox(), W.HBox(), W.HBox()
        self.width.observe(self._on_filter, "value")
        self.mse.observe(self._on_filter, "value")
        self.slider.observe(self._on_select, "value")
        self.widget = W.VBox([W.HBox([self.width, self.mse]), self.slider, self.caption, self.sample_box,
                              W.HTML("<b>nearest training fusions</b>"), self.train_box,
                              W.HTML("<b>nearest held-out fusions (never trained on)</b>"), self.holdout_box])
        self.render()

    def _on_filter(self, _change):
        with self._lock:
            self.b.set_width(None if self.width.value == "all" else int(self.width.value))
            self.b.set_mse_range(*self.mse.value)
            self.slider.max = max(len(self.b.candidates), 1)
            self.slider.value = self.b.position + 1
            self.render()

    def _on_select(self, _change):
        with self._lock:  # the slider's latest value, not this message's: messages may be handled out of order
            self.b.select(self.slider.value - 1)
            self.render()

    def render(self):
        """Redraw images and captions from the browser's state."""
        v = self.b.view()
        self.caption.value = v["caption"]
        if v["sample"] is None:
            self.sample_box.children = self.train_box.children = self.holdout_box.children = ()
            return
        i = v["sample"]
        self.sample_box.children = (_tile(self.b.samples[i], f"sample {v['position']} of {v['count']}<br>image {i}, "
                                          f"width {self.b.widths[i]}<br>min MSE {self.b.min_mse[i]:.4f}",
                                          self.sample_scale),)
        self.train_box.children = tuple(_tile(self.b.train[n], f"#{r}: {cap}<br>MSE {m:.4f}", self.scale)
                                        for r, (n, m, cap) in enumerate(v["train"], 1))
        self.holdout_box.children = tuple(_tile(self.b.holdout[n], f"#{r}: {cap}<br>MSE {m:.4f}", self.scale)
                                          for r, (n, m, cap) in enumerate(v["holdout"], 1))

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
