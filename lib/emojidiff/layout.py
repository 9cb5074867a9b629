"""Where a run's artefacts live under outputs/<profile>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE = Path("outputs")  # run folders are outputs/<profile name> unless told otherwise


@dataclass(frozen=True)
class RunLayout:
    """The folders of one study run; every stage reads and writes through these names."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def for_config(cls, cfg, out_dir: str | Path | None = None, base: str | Path = DEFAULT_BASE) -> RunLayout:
        """The run folder `out_dir`, or by default <base>/<profile name> (base: outputs/ of the working folder)."""
        return cls(out_dir if out_dir is not None else Path(base) / cfg.name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def human_study(self) -> Path:
        return self.root / "human_study"

    def train(self, width: int) -> Path:
        return self.root / "train" / f"w{width}"

    def samples(self, width: int) -> Path:
        return self.root / "samples" / f"w{width}"

    def figure(self, name: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / name
