"""The kitchen: ask a conditional model for the fusion of two faces, as a function and as a widget."""

from __future__ import annotations

import threading

import numpy as np

from emojidiff.data.dataset import describe
from emojidiff.evaluation.copies import reference_set
from emojidiff.evaluation.kitchen import Kitchen
from emojidiff.evaluation.metrics import nearest_k
from emojidiff.images import png_bytes


def kitchen(checkpoint, a, b, n: int = 8, guidance: float = 3.0, seed: int = 0, device="cpu",
            num_steps: int | None = None) -> np.ndarray:
    """The fusion of faces a and b (name, emoji or index) by a conditional checkpoint: uint8 (n, H, W, 3)."""
    k = checkpoint if isinstance(checkpoint, Kitchen) else Kitchen.load(checkpoint, device=device,
                                                                         num_steps=num_steps)
    return k.cook(a, b, n=n, guidance=guidance, seed=seed)


class KitchenState:
    """The widget's state and logic, no widgets: choose faces, guidance and seed; read what is shown."""

    def __init__(self, kitchen_: Kitchen, dataset, xflip: bool = True, n: int = 8, k: int = 3,
                 guidance: float = 3.0, seed: int = 0):
        self.kitchen, self.dataset, self.n, self.k = kitchen_, dataset, n, k
        self.a, self.b, self.guidance, self.seed = 0, 1, float(guidance), int(seed)
        self.train_rows = np.flatnonzero((dataset.manifest["split"] == "train").to_numpy())
        self.reference = reference_set(dataset.images[self.train_rows], xflip=xflip)
        self.samples: np.ndarray | None = None

    @property
    def options(self) -> list[tuple[str, int]]:
        """(label, index) per face: its emoji and name."""
        return [(f"{r.char} {r.name}", i) for i, r in enumerate(self.kitchen.faces.itertuples())]

    def set(self, a=None, b=None, guidance: float | None = None, seed: int | None = None) -> None:
        """Change the choice (faces by name, emoji or index) and redraw the samples."""
        self.a = self.kitchen.index(a) if a is not None else self.a
        self.b = self.kitchen.index(b) if b is not None else self.b
        if guidance is not None:
            if guidance < 0:
                raise ValueError(f"guidance must be >= 0, got {guidance}")
            self.guidance = float(guidance)
        self.seed = int(seed) if seed is not None else self.seed
        self.samples = None

    def truth(self) -> tuple[int | None, str]:
        """The dataset row of the true fusion (a, b) and its split ("train", "holdout"), or (None, why)."""
        if self.a == self.b:
            return None, "a face with itself is not a fusion"
        fa, fb = self.kitchen.faces.unified.iloc[self.a], self.kitchen.faces.unified.iloc[self.b]
        p = self.dataset.pairs
        hit = p[(p.parent_a == fa) & (p.parent_b == fb)]
        if hit.empty:
            return None, "no fusion of these faces in the dataset"
        return int(hit.row.iloc[0]), str(hit.split.iloc[0])

    def view(self) -> dict:
        """Samples, the true fusion with its split, and each sample's nearest training images (rows, MSE)."""
        if self.samples is None:
            self.samples = self.kitchen.cook(self.a, self.b, self.n, self.guidance, self.seed)
        idx, mse = _nearest(self.reference, self.samples, self.k)
        row, split = self.truth()
        names = self.kitchen.faces
        return {"a": self.a, "b": self.b, "samples": self.samples, "truth_row": row,
                "truth_split": split if row is not None else None,
                "caption": f"{names.char.iloc[self.a]} {names.name.iloc[self.a]} + {names.char.iloc[self.b]} "
                           f"{names.name.iloc[self.b]}, guidance {self.guidance:g}, seed {self.seed}: " +
                           (f"true fusion in {'training' if split == 'train' else 'held-out (never trained)'}"
                            if row is not None else split),
                "nearest": [[(int(self.train_rows[j]), float(m), describe(self.dataset.manifest, self.train_rows[j]),
                              bool(f)) for j, m, f in zip(ji, mi, fi)] for ji, fi, mi in zip(idx[0], idx[1], mse)]}


def _nearest(reference, samples: np.ndarray, k: int):
    """Per sample the k nearest training images (mirrors folded to their source): ((index, mirrored), mse)."""
    mse, j = nearest_k(samples, reference.images, k=min(k, len(reference.images)))
    return (reference.index[j], reference.mirrored[j]), mse


def _tile(image: np.ndarray, caption: str, scale: int):
    import ipywidgets as W

    return W.VBox([W.Image(value=png_bytes(image, scale), format="png"),
                   W.HTML(f"<div style='font-size:10px;line-height:1.2;width:{image.shape[1] * scale}px'>"
                          f"{caption}</div>")])


class KitchenWidget:
    """ipywidgets front end of a KitchenState: two face dropdowns, a guidance slider, a seed box, a cook button."""

    def __init__(self, state: KitchenState, scale: int = 3):
        import ipywidgets as W

        self.s, self.scale = state, scale
        self._lock = threading.RLock()  # one change at a time, as in the browser
        self.a = W.Dropdown(options=state.options, value=state.a, description="eyes of")
        self.b = W.Dropdown(options=state.options, value=state.b, description="mouth of")
        self.guidance = W.FloatSlider(value=state.guidance, min=0.0, max=8.0, step=0.5, description="guidance",
                                      continuous_update=False)
        self.seed = W.IntText(value=state.seed, description="seed")
        self.caption = W.HTML()
        self.truth_box, self.sample_box, self.nearest_box = W.HBox(), W.HBox(), W.HBox()
        for w in (self.a, self.b, self.guidance, self.seed):
            w.observe(self._on_change, "value")
        self.widget = W.VBox([W.HBox([self.a, self.b]), W.HBox([self.guidance, self.seed]), self.caption,
                              W.HTML("<b>true fusion</b>"), self.truth_box, W.HTML("<b>samples</b>"),
                              self.sample_box, W.HTML("<b>nearest training image of each sample</b>"),
                              self.nearest_box])
        self.render()

    def _on_change(self, _change):
        with self._lock:
            self.s.set(a=self.a.value, b=self.b.value, guidance=self.guidance.value, seed=self.seed.value)
            self.render()

    def render(self):
        """Redraw from the state."""
        v = self.s.view()
        self.caption.value = v["caption"]
        ds = self.s.dataset
        self.truth_box.children = () if v["truth_row"] is None else (
            _tile(ds.images[v["truth_row"]], "train" if v["truth_split"] == "train" else "held-out", self.scale),)
        self.sample_box.children = tuple(_tile(im, f"sample {i}", self.scale) for i, im in enumerate(v["samples"]))
        self.nearest_box.children = tuple(
            _tile(ds.images[near[0][0]][:, ::-1] if near[0][3] else ds.images[near[0][0]],
                  f"{near[0][2]}{' (mirror)' if near[0][3] else ''}<br>MSE {near[0][1]:.4f}", self.scale)
            for near in v["nearest"])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
