"""Typed study configuration: YAML profiles in params/ loaded into dataclasses that refuse unknown keys."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A profile that names an unknown key, gives a wrong type or cannot be read."""


@dataclass
class DataConfig:
    styles: list[str] = field(default_factory=lambda: ["noto"])  # emoji sets to fuse
    faces: str = "core"  # "core" (plain round faces) or "all"
    size: int = 32  # training resolution in pixels
    gallery_size: int = 128  # resolution for galleries
    holdout: float = 0.1  # share of ordered pairs held out of training
    max_faces: int = 0  # use only the first N faces of the list (0: all); for smoke runs
    split: str = "twins"  # held-out unit: "twins" (image twin groups) or "pairs" (part combinations, data/pairs.py)


@dataclass
class ModelConfig:
    widths: list[int] = field(default_factory=lambda: [32])  # UNet base widths; one run per width
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # width multiplier per resolution
    num_blocks: int = 2  # residual blocks per resolution
    attn_resolutions: list[int] = field(default_factory=lambda: [8])  # resolutions with self-attention
    dropout: float = 0.0  # dropout in residual blocks
    sigma_data: float | None = None  # EDM sigma_data; None: measured on the training images
    embedding: str = "positional"  # c_noise embedding: "positional" (DDPM++) or "fourier" (NCSN++)
    label_dim: int = 0  # classes for conditioning (faces); 0: unconditional
    label_slots: int = 2  # labels per image when conditioned (a fusion has two faces)
    label_dropout: float = 0.0  # share of training labels dropped to null, for guidance
    conditional: bool = False  # condition on (parent A, parent B); label_dim then becomes the number of faces
    architecture: str = "ddpmpp"  # "ddpmpp" (EDM's DDPM++ UNet) or "edm2" (EDM2's magnitude-preserving UNet)


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch (split across ranks)
    lr: float = 1e-3  # Adam learning rate after ramp-up
    lr_rampup_kimg: float = 10.0  # linear learning-rate warm-up, thousands of images
    lr_decay_kimg: float = 0.0  # EDM2's inverse-square-root decay: lr / sqrt(kimg / this) past it (0: constant lr)
    duration_kimg: float = 150.0  # training length, thousands of images
    ema_halflife_kimg: float = 10.0  # EMA half-life, thousands of images
    ema_rampup_ratio: float | None = 0.05  # EMA half-life at most this share of images seen
    ema_std: float = 0.0  # > 0: EDM2's power-function EMA of this relative std instead of the half-life EMA
    ema_std_extra: float = 0.0  # > 0 (with ema_std): a second power EMA saved beside each snapshot, for post-hoc EMA
    adam_beta2: float = 0.999  # Adam's second-moment decay (EDM 0.999, EDM2 0.99)
    xflip: bool = True  # horizontal-flip augmentation
    P_mean: float = -1.2  # training noise distribution, ln(sigma) ~ N(P_mean, P_std^2)
    P_std: float = 1.2
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    snapshot_kimg: float = 10.0  # checkpoint and EMA snapshot interval
    checkpoint_kimg: float = 5.0  # resume-checkpoint interval (0: at snapshots only); the latest two are kept
    max_snapshots: int = 20  # EMA snapshots kept; older ones thinned to a doubling interval
    precision: str = "auto"  # "auto" (bf16 where native, else fp32), "fp32", "bf16", "fp16" (CUDA, with a GradScaler)
    compile: bool = False  # torch.compile the network
    batch_gpu: int = 0  # images per forward/backward on one process (EDM's name); 0: its whole share, no accumulation
    channels_last: str = "auto"  # "auto" (CPU: with bf16, as before; CUDA: off until a GPU benchmark says), "on", "off"
    deterministic: bool = False  # CUDA: cudnn.deterministic, no cudnn.benchmark (slower); CPU runs are bitwise anyway


@dataclass
class SampleConfig:
    num_steps: int = 18  # sampler steps (Heun: 2 * num_steps - 1 network evaluations)
    solver: str = "heun"  # "heun" (Algorithm 2), "euler" or "dpmpp2m" (DPM-Solver++(2M))
    guidance: float = 1.0  # classifier-free guidance weight w (conditional nets): 0 unconditional, 1 conditional
    batch_size: int = 256  # images per sampler batch
    num_images: int = 1000  # images drawn per checkpoint for evaluation
    S_churn: float = 0.0  # Algorithm 2 stochasticity
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0
    compile: bool = False  # torch.compile the UNet for sampling (static shapes; channels_last under bf16 on CPU)


@dataclass
class EvalConfig:
    inception_weights: str | None = None  # local Inception-V3 (FID) weights; None: torch-fidelity download
    inception: bool = True  # compute Inception FID/KID (reported unavailable when weights cannot be had)
    domain_features: bool = True  # FID/KID on a small network trained on the fusions
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    snapshots: str = "all"  # "all" or "last": which EMA snapshots to evaluate
    max_snapshots: int = 0  # evaluate at most this many snapshots per width, evenly spaced, last kept (0: no cap)
    domain_epochs: int = 6  # training epochs of the domain-feature network (parents classifier)


@dataclass
class KitchenConfig:
    samples: int = 4  # samples per pair (k) in the held-out-pair evaluation
    guidance: float = 3.0  # classifier-free guidance weight of the evaluation and the widget
    max_pairs: int = 0  # held-out pairs evaluated (seeded choice; 0: all), and as many training pairs
    sweep: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 5.0])  # guidance weights of the sweep
    sweep_pairs: int = 16  # held-out pairs in the sweep
    max_snapshots: int = 4  # EMA snapshots in the generalisation-gap curve (evenly spaced, last kept)
    gallery_rows: int = 8  # pairs per gallery figure
    solver: str = ""  # sampler of the kitchen (guided sampling costs twice): "" = sample.solver
    num_steps: int = 0  # its steps; 0 = sample.num_steps


@dataclass
class StudyConfig:
    pairs: int = 60  # two-alternative pairs shown per human-study session
    answers_csv: str = "human_study/answers.csv"  # relative to the run's output folder
    neighbours: int = 5  # nearest fusions shown per sample in the browser
    trace_patch: int = 5  # odd patch size (pixels) for component tracing


@dataclass
class TransitionConfig:
    ladder: list[int] = field(default_factory=list)  # training-set sizes N (0: the largest two halves allow); []: off
    width: int = 32  # UNet base width of every transition model
    duration_kimg: list[float] = field(default_factory=list)  # training length per N, one per ladder entry
    snapshots: int = 4  # EMA snapshots per model, evenly spaced over its training
    samples: int = 64  # samples per snapshot, from the same noise seeds for both models of an N
    gallery: int = 8  # seeds per gallery row


@dataclass
class Config:
    name: str = "cpu"  # profile name; outputs go to outputs/<name>
    seed: int = 0  # one seed fixes the dataset split, training and samples
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    kitchen: KitchenConfig = field(default_factory=KitchenConfig)
    transition: TransitionConfig = field(default_factory=TransitionConfig)
    notebooks: list[str] = field(default_factory=list)  # notebook prefixes this profile runs, e.g. ["08"]; []: all

    def to_dict(self) -> dict:
        """The resolved configuration as plain data."""
        return dataclasses.asdict(self)

    def canonical_json(self) -> bytes:
        """The resolved configuration as sorted-key JSON: what every digest of a config hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str).encode()

    def digest(self) -> str:
        """A stable hash of the resolved configuration."""
        return hashlib.sha256(self.canonical_json()).hexdigest()[:16]


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str, source: str):
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, source, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str) and value.lower() in ("inf", ".inf", "-inf"):
                return float(value.lstrip("."))
            raise ConfigError(f"{source}: {key}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{source}: {key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


COPY_RULE = "the copy threshold is chosen from the data (emojidiff.classify_samples, metrics/copy_thresholds.json)"
REMOVED = {"train.num_workers": "training indexes the images in memory; it never used workers",
           "eval.copy_mse": COPY_RULE, "eval.copy_ratio": COPY_RULE, "study.copy_rule": COPY_RULE}


def _build(cls, data: dict, source: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for key in [k for k in data if f"{prefix}{k}" in REMOVED]:  # old profiles still load, with a warning
        warnings.warn(f"{source}: {prefix}{key} was removed ({REMOVED[prefix + key]}); ignored, delete it",
                      stacklevel=4)
        data = {k: v for k, v in data.items() if k != key}
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]!s} (known keys{' under ' + prefix[:-1] if prefix else ''}: "
            f"{', '.join(names)})"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict | None, source: str = "<dict>") -> Config:
    """Build a Config from nested plain data, refusing unknown keys and wrong types."""
    cfg = _build(Config, data or {}, source)
    _validate(cfg, source)
    return cfg


MAX_GALLERY = 512  # px; galleries are rendered per image in memory (4096 px with 3 faces took 5.3 GB)


def _validate(cfg: Config, source: str) -> None:
    """Refuse values that would fail late (after folders exist) or silently give a wrong study."""
    d, m, t, s, e, st = cfg.data, cfg.model, cfg.train, cfg.sample, cfg.eval, cfg.study
    checks = [
        (cfg.seed >= 0, "seed", "must be >= 0", cfg.seed),
        (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"), "device",
         "must be auto, cpu or cuda[:N]", cfg.device),
        (len(d.styles) > 0 and all(d.styles), "data.styles", "must list at least one emoji style", d.styles),
        (len(set(d.styles)) == len(d.styles), "data.styles", "must not repeat a style", d.styles),
        (d.faces in ("core", "all"), "data.faces", "must be 'core' or 'all'", d.faces),
        (d.size in (32, 64), "data.size", "must be 32 or 64", d.size),
        (16 <= d.gallery_size <= MAX_GALLERY, "data.gallery_size", f"must be in [16, {MAX_GALLERY}] px",
         d.gallery_size),
        (0.0 <= d.holdout < 1.0, "data.holdout", "must be in [0, 1)", d.holdout),
        (d.max_faces == 0 or d.max_faces >= 2, "data.max_faces", "must be 0 (all) or >= 2 (a fusion needs two)",
         d.max_faces),
        (len(m.widths) > 0, "model.widths", "must list at least one width", m.widths),
        (all(w > 0 for w in m.widths), "model.widths", "must be positive", m.widths),
        (len(m.channel_mult) > 0 and all(c > 0 for c in m.channel_mult), "model.channel_mult",
         "must list at least one positive multiplier", m.channel_mult),
        (m.num_blocks >= 1, "model.num_blocks", "must be >= 1", m.num_blocks),
        (all(r > 0 for r in m.attn_resolutions), "model.attn_resolutions", "must be positive", m.attn_resolutions),
        (0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)", m.dropout),
        (m.sigma_data is None or m.sigma_data > 0, "model.sigma_data", "must be positive (or null: measured)",
         m.sigma_data),
        (m.embedding in ("positional", "fourier"), "model.embedding", "must be 'positional' or 'fourier'",
         m.embedding),
        (m.architecture in ("ddpmpp", "edm2"), "model.architecture", "must be 'ddpmpp' or 'edm2'",
         m.architecture),
        (m.label_dim >= 0, "model.label_dim", "must be >= 0", m.label_dim),
        (m.label_slots >= 1, "model.label_slots", "must be >= 1", m.label_slots),
        (0.0 <= m.label_dropout < 1.0, "model.label_dropout", "must be in [0, 1)", m.label_dropout),
        (t.batch_size > 0, "train.batch_size", "must be positive", t.batch_size),
        (t.lr > 0, "train.lr", "must be positive", t.lr),
        (t.lr_rampup_kimg >= 0, "train.lr_rampup_kimg", "must be >= 0", t.lr_rampup_kimg),
        (t.lr_decay_kimg >= 0, "train.lr_decay_kimg", "must be >= 0 (0: no decay)", t.lr_decay_kimg),
        (t.duration_kimg > 0, "train.duration_kimg", "must be positive", t.duration_kimg),
        (t.ema_halflife_kimg > 0, "train.ema_halflife_kimg", "must be positive", t.ema_halflife_kimg),
        (t.ema_rampup_ratio is None or t.ema_rampup_ratio > 0, "train.ema_rampup_ratio",
         "must be positive (or null: no ramp-up)", t.ema_rampup_ratio),
        (0 <= t.ema_std < 0.2887, "train.ema_std", "must be in [0, 0.2887) (0: half-life EMA; EDM2 used 0.05-0.15)",
         t.ema_std),
        (t.ema_std_extra == 0 or (t.ema_std > 0 and 0 < t.ema_std_extra < 0.2887 and t.ema_std_extra != t.ema_std),
         "train.ema_std_extra", "must be 0 (none) or in (0, 0.2887), differ from train.ema_std and come with "
         "train.ema_std > 0 (EDM2 stores 0.05 and 0.10)", t.ema_std_extra),
        (0 < t.adam_beta2 < 1, "train.adam_beta2", "must be in (0, 1)", t.adam_beta2),
        (t.P_std > 0, "train.P_std", "must be positive", t.P_std),
        (t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0: off)", t.grad_clip),
        (t.snapshot_kimg > 0, "train.snapshot_kimg", "must be positive", t.snapshot_kimg),
        (t.checkpoint_kimg >= 0, "train.checkpoint_kimg", "must be >= 0 (0: at snapshots)", t.checkpoint_kimg),
        (t.max_snapshots >= 1, "train.max_snapshots", "must be >= 1", t.max_snapshots),
        (t.precision in ("auto", "fp32", "bf16", "fp16"), "train.precision", "must be auto, fp32, bf16 or fp16",
         t.precision),
        (t.batch_gpu >= 0, "train.batch_gpu", "must be >= 0 (0: the whole per-process batch)", t.batch_gpu),
        (t.batch_gpu == 0 or t.batch_size % t.batch_gpu == 0, "train.batch_gpu",
         f"must divide train.batch_size ({t.batch_size})", t.batch_gpu),
        (t.channels_last in ("auto", "on", "off"), "train.channels_last", "must be auto, on or off", t.channels_last),
        (s.num_steps > 0, "sample.num_steps", "must be positive", s.num_steps),
        (s.batch_size > 0, "sample.batch_size", "must be positive", s.batch_size),
        (s.num_images > 0, "sample.num_images", "must be positive", s.num_images),
        (s.S_churn >= 0, "sample.S_churn", "must be >= 0", s.S_churn),
        (0 <= s.S_min <= s.S_max, "sample.S_min", "must be in [0, sample.S_max]", s.S_min),
        (s.S_noise > 0, "sample.S_noise", "must be positive", s.S_noise),
        (s.solver in ("heun", "euler", "dpmpp2m"), "sample.solver", "must be heun, euler or dpmpp2m", s.solver),
        (s.guidance >= 0, "sample.guidance", "must be >= 0", s.guidance),
        (e.kid_subsets > 0, "eval.kid_subsets", "must be positive", e.kid_subsets),
        (e.kid_subset_size > 1, "eval.kid_subset_size", "must be >= 2", e.kid_subset_size),
        (e.snapshots in ("all", "last"), "eval.snapshots", "must be 'all' or 'last'", e.snapshots),
        (e.max_snapshots >= 0, "eval.max_snapshots", "must be >= 0 (0: no cap)", e.max_snapshots),
        (e.domain_epochs >= 1, "eval.domain_epochs", "must be >= 1", e.domain_epochs),
        (st.pairs > 0, "study.pairs", "must be positive", st.pairs),
        (bool(st.answers_csv), "study.answers_csv", "must name a file", st.answers_csv),
        (st.neighbours > 0, "study.neighbours", "must be positive", st.neighbours),
        (d.split in ("twins", "pairs"), "data.split", "must be 'twins' or 'pairs'", d.split),
        (cfg.kitchen.samples >= 2, "kitchen.samples", "must be >= 2 (diversity needs two)", cfg.kitchen.samples),
        (cfg.kitchen.guidance >= 0, "kitchen.guidance", "must be >= 0", cfg.kitchen.guidance),
        (cfg.kitchen.max_pairs >= 0, "kitchen.max_pairs", "must be >= 0 (0: all)", cfg.kitchen.max_pairs),
        (len(cfg.kitchen.sweep) > 0 and all(w >= 0 for w in cfg.kitchen.sweep), "kitchen.sweep",
         "must list guidance weights >= 0", cfg.kitchen.sweep),
        (cfg.kitchen.sweep_pairs >= 1, "kitchen.sweep_pairs", "must be >= 1", cfg.kitchen.sweep_pairs),
        (cfg.kitchen.solver in ("", "heun", "euler", "dpmpp2m"), "kitchen.solver",
         "must be '', 'heun', 'euler' or 'dpmpp2m'", cfg.kitchen.solver),
        (cfg.kitchen.num_steps >= 0, "kitchen.num_steps", "must be >= 0 (0: sample.num_steps)", cfg.kitchen.num_steps),
        (cfg.kitchen.max_snapshots >= 1, "kitchen.max_snapshots", "must be >= 1", cfg.kitchen.max_snapshots),
        (cfg.kitchen.gallery_rows >= 1, "kitchen.gallery_rows", "must be >= 1", cfg.kitchen.gallery_rows),
        (st.trace_patch > 0 and st.trace_patch % 2 == 1, "study.trace_patch", "must be a positive odd number",
         st.trace_patch),
        *_transition_checks(cfg.transition),
        (all(n.isdigit() for n in cfg.notebooks), "notebooks", "must list notebook number prefixes such as '08'",
         cfg.notebooks),
    ]
    for ok, key, why, value in checks:
        if not ok:
            raise ConfigError(f"{source}: {key} {why}, got {value!r}")


def _transition_checks(tr: TransitionConfig) -> list[tuple]:
    """The transition section's checks, in _validate's (ok, key, why, value) form."""
    return [
        (all(n >= 0 for n in tr.ladder), "transition.ladder", "must list sizes >= 1 (or 0: the largest)", tr.ladder),
        (len(set(tr.ladder)) == len(tr.ladder), "transition.ladder", "must not repeat a size", tr.ladder),
        (len(tr.duration_kimg) == len(tr.ladder), "transition.duration_kimg",
         f"must give one length per ladder entry ({len(tr.ladder)})", tr.duration_kimg),
        (all(k > 0 for k in tr.duration_kimg), "transition.duration_kimg", "must be positive", tr.duration_kimg),
        (tr.width > 0, "transition.width", "must be positive", tr.width),
        (tr.snapshots >= 1, "transition.snapshots", "must be >= 1", tr.snapshots),
        (tr.samples >= 1, "transition.samples", "must be >= 1", tr.samples),
        (tr.gallery >= 1, "transition.gallery", "must be >= 1", tr.gallery),
    ]


def load_config(path: str | Path) -> Config:
    """Load a YAML profile; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"profile not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not data:  # an empty file would silently become the default (cpu) profile
        raise ConfigError(f"{path}: empty profile; a profile spells out its keys (copy params/cpu.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return config_from_dict(data, source=str(path))


def save_resolved(cfg: Config, out_dir: str | Path) -> Path:
    """Write the resolved configuration beside a run's outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
