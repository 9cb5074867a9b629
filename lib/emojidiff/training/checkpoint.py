"""Checkpoints that survive a kill: safetensors + a small JSON with a checksum, written then renamed; never pickles."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from emojidiff.config import ModelConfig
from emojidiff.model.edm import build_denoiser

FORMAT = "emojidiff-checkpoint/1"  # full training state, for resume
EMA_FORMAT = "emojidiff-ema/1"  # EMA weights only, the thinned series used for evaluation
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ and torch.save's zip container
_MAX_HEADER = 100_000_000  # safetensors refuses larger headers
_TMP = re.compile(r"^\..+\.tmp(\d+)(\.\w+)?$")  # _fsync_write's and sampling's temporary names


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, of an unknown format, or a pickle."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """A fingerprint of a module's weights (names, dtypes, bytes), to compare runs and processes."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fsync_write(path: Path, write) -> None:
    """Write through `write(tmp_path)`, fsync, then rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(stem: Path, tensors: dict[str, torch.Tensor], meta: dict, fmt: str = FORMAT) -> Path:
    """Write stem.safetensors, then stem.json (the commit marker) holding the tensors' sha256; returns the json."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tensor_path, json_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _fsync_write(tensor_path, lambda p: save_file(tensors, str(p)))
    meta = {"format": fmt, **meta, "tensors": tensor_path.name, "sha256": sha256_file(tensor_path)}
    _fsync_write(json_path, lambda p: p.write_text(json.dumps(meta, indent=1, default=str)))
    dir_fd = os.open(stem.parent, os.O_RDONLY)  # make the renames durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return json_path


def _refuse_pickle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file opens with its header length (u64, little-endian) and then "{"; its first byte
    # may well be 0x80, so only a file that is not safetensors-shaped is judged by the pickle magic.
    if len(head) == 9 and head[8:9] == b"{" and 0 < (n := int.from_bytes(head[:8], "little")) < _MAX_HEADER:
        if n + 8 > size:
            raise CheckpointError(f"{path}: truncated inside its safetensors header (the header says {n} bytes, "
                                  f"the file has {size})")
        return
    if path.suffix == ".safetensors" and len(head) < 9:
        raise CheckpointError(f"{path}: truncated ({size} bytes, shorter than a safetensors header)")
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a pickle / torch.save file; refused: emojidiff loads only its own safetensors + JSON "
            "checkpoints, because unpickling can run arbitrary code")


def read_meta(path: str | Path) -> dict:
    """The JSON of a checkpoint (given its .json or .safetensors path), checked for format and checksum."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    _refuse_pickle(path)
    json_path = path.with_suffix(".json")
    if not json_path.is_file():
        raise CheckpointError(f"{path}: no {json_path.name} beside it (an incomplete or foreign checkpoint)")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{json_path}: corrupt checkpoint metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, EMA_FORMAT):
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{json_path}: unknown checkpoint format {got!r} (expected {FORMAT} or {EMA_FORMAT})")
    tensor_path = json_path.with_name(meta["tensors"])
    if not tensor_path.is_file():
        raise CheckpointError(f"{json_path}: its tensor file {tensor_path.name} is missing")
    _refuse_pickle(tensor_path)
    digest = sha256_file(tensor_path)
    if digest != meta["sha256"]:
        raise CheckpointError(f"{tensor_path}: checksum mismatch (truncated or corrupt: sha256 {digest[:12]}... "
                              f"!= recorded {meta['sha256'][:12]}...)")
    meta["_json"], meta["_tensors"] = str(json_path), str(tensor_path)
    return meta


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a verified checkpoint (safetensors only: nothing is unpickled)."""
    meta = read_meta(path)
    try:
        tensors = load_file(meta["_tensors"])
    except Exception as e:  # safetensors raises its own error types on malformed headers
        raise CheckpointError(f"{meta['_tensors']}: not a readable safetensors file ({e})") from e
    return tensors, meta


def _sorted(train_dir: Path, prefix: str) -> list[Path]:
    return sorted(Path(train_dir).glob(f"{prefix}-*.json"))


def move_aside(json_path: Path) -> Path:
    """Move an unreadable checkpoint (json and tensors) into bad/ beside it; returns bad/."""
    json_path = Path(json_path)
    bad = json_path.parent / "bad"
    bad.mkdir(exist_ok=True)
    for p in (json_path, json_path.with_suffix(".safetensors")):
        if p.exists():
            shutil.move(str(p), bad / p.name)
    return bad


def latest_good(train_dir: str | Path, prefix: str = "ckpt", move_bad: bool = False) -> tuple[dict, dict] | None:
    """The newest checkpoint that verifies, warning by name about each newer one that does not; None if none.

    With `move_bad` (the writer of the folder) unreadable ones go to bad/ so they never shadow good ones.
    """
    paths = _sorted(Path(train_dir), prefix)
    for i, json_path in reversed(list(enumerate(paths))):
        try:
            return load(json_path)
        except CheckpointError as e:
            then = "falling back to the previous one" if i else "no usable checkpoint is left"
            moved = f"moved to {move_aside(json_path)}; " if move_bad else ""
            warnings.warn(f"skipping bad checkpoint {json_path.name}: {e}; {moved}{then}", stacklevel=2)
    return None


def prune(train_dir: str | Path, prefix: str = "ckpt", keep: int = 2, just_saved: Path | None = None) -> None:
    """Keep the newest `keep` checkpoints that verify; move unreadable ones among them to bad/, delete older.

    `just_saved` (hashed by `save` a moment ago) is not read again: a paper-profile checkpoint is ~900 MB.
    """
    good = 0
    for json_path in reversed(_sorted(Path(train_dir), prefix)):
        if good >= keep:
            remove(json_path)
            continue
        try:
            if json_path != just_saved:
                read_meta(json_path)
            good += 1
        except CheckpointError as e:
            warnings.warn(f"unreadable checkpoint {json_path.name} moved to {move_aside(json_path)}: {e}", stacklevel=2)


def latest_good_snapshot(train_dir: str | Path) -> tuple[float, Path] | None:
    """The newest EMA snapshot that verifies (kimg, .safetensors), warning by name about each damaged newer one."""
    snaps = list_snapshots(train_dir)
    for i in range(len(snaps) - 1, -1, -1):
        try:
            read_meta(snaps[i][1])
            return snaps[i]
        except CheckpointError as e:
            then = f"using the previous good one ({snaps[i - 1][1].name})" if i else "no earlier snapshot"
            warnings.warn(f"damaged EMA snapshot {snaps[i][1].name}: {e}; {then}", stacklevel=2)
    return None


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete temporary files (.NAME.tmpPID) left by killed writers, only those whose PID is not alive."""
    gone = []
    for p in Path(folder).glob(".*.tmp*"):
        m = _TMP.match(p.name)
        if not (m and p.is_file()) or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its writer is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def list_snapshots(train_dir: str | Path, prefix: str = "ema") -> list[tuple[float, Path]]:
    """The EMA snapshots of a training run as (kimg, path to .safetensors), oldest first (prefix "pema": the
    second power EMA's, train.ema_std_extra)."""
    out = []
    for json_path in _sorted(Path(train_dir), prefix):
        try:
            meta = json.loads(json_path.read_text())
        except (OSError, ValueError):  # JSONDecodeError, UnicodeDecodeError: torn or foreign
            continue
        if not isinstance(meta, dict):
            continue
        tensor_path = json_path.with_name(meta.get("tensors", ""))
        if meta.get("format") == EMA_FORMAT and tensor_path.is_file():
            out.append((float(meta["kimg"]), tensor_path))
    return sorted(out, key=lambda t: t[0])


def pick_snapshots(snaps: list, which: str = "all", max_snapshots: int = 0) -> list:
    """The snapshots to evaluate: all or the last; capped to `max_snapshots` evenly spaced, the last always kept."""
    if not snaps or which == "last":
        return snaps[-1:]
    if max_snapshots and len(snaps) > max_snapshots:
        idx = np.unique(np.round(np.linspace(0, len(snaps) - 1, max_snapshots)).astype(int))
        return [snaps[i] for i in idx]
    return list(snaps)


def read_metrics(train_dir: str | Path) -> pd.DataFrame:
    """The metrics log of a training folder as a DataFrame (one row per logged step)."""
    path = Path(train_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}: train first (notebook 02_training or emojidiff train)")
    return pd.DataFrame(read_log(path))


def read_log(path: Path) -> list[dict]:
    """The records of a metrics log; lines that do not parse (a torn write) are skipped with a warning."""
    records, torn = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "step" in rec:
            records.append(rec)
        else:
            torn.append(i)
    if torn:
        warnings.warn(f"{path}: skipped unreadable line(s) {', '.join(map(str, torn))} (a torn write?)", stacklevel=3)
    return records


def sample_grids(train_dir: str | Path) -> list[tuple[float, Path]]:
    """The EMA sample grids saved at each snapshot, as (kimg, png path), oldest first."""
    out = [(float(json.loads(p.with_suffix(".json").read_text())["kimg"]), p.with_suffix(".png"))
           for p in Path(train_dir).glob("ema-*.json") if p.with_suffix(".png").is_file()]
    return sorted(out)


def remove(json_path: Path) -> None:
    """Delete a checkpoint: its json (the commit marker) first, then its tensors."""
    json_path = Path(json_path)
    for p in (json_path, json_path.with_suffix(".safetensors")):
        p.unlink(missing_ok=True)


def thin(indices: list[int], keep: int) -> set[int]:
    """Snapshot ordinals to keep: multiples of the least power-of-two spacing that fits `keep`, and the last."""
    if not indices:
        return set()
    spacing = 1
    while sum(1 for i in indices if i % spacing == 0) > max(keep - 1, 1):
        spacing *= 2
    return {i for i in indices if i % spacing == 0} | {indices[-1]}


def rank_rng_state() -> dict[str, torch.Tensor]:
    """This process's own RNG states: the CPU generator, and its current CUDA device's when CUDA is in use."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # the current device only: each rank owns one GPU
    return states


def pack_state(net, ema, opt, generators: dict[str, torch.Generator],
               rank_states: list[dict[str, torch.Tensor]] | None = None,
               extras: dict[str, torch.nn.Module] | None = None) -> tuple[dict, dict]:
    """Everything a resume needs as (tensors, JSON-able meta): weights, EMA, Adam state and every RNG state.

    `rank_states` holds each rank's `rank_rng_state()` in rank order (default: this process's only); `extras`
    more modules by name (a second EMA), stored as "<name>.<key>".
    """
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    for name, module in (extras or {}).items():
        tensors |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
    opt_sd = opt.state_dict()
    for idx, st in opt_sd["state"].items():
        tensors |= {f"opt.{idx}.{k}": v for k, v in st.items() if torch.is_tensor(v)}
    rank_states = [rank_rng_state()] if rank_states is None else rank_states
    for r, states in enumerate(rank_states):
        tensors |= {f"rng.rank{r}.{k}": v for k, v in states.items()}
    tensors |= {f"rng.gen.{name}": g.get_state() for name, g in generators.items()}
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {"optimizer": {"param_groups": opt_sd["param_groups"]},
            "rng": {"numpy": [np_state[0], *np_state[2:]], "python": random.getstate(),
                    "world_size": len(rank_states), "generator_devices": {n: str(g.device) for n, g in
                                                                          generators.items()}}}
    return tensors, meta


def _restore_rank_rng(tensors: dict, meta: dict, rank: int, world_size: int) -> None:
    """Put this rank's CPU/CUDA RNG states back; other world sizes or GPU counts warn instead of failing."""
    saved = meta["rng"].get("world_size")
    if saved is None:  # before per-rank states: rank 0's CPU state, and one CUDA state per visible GPU
        mine = {"torch": tensors["rng.torch"]} if rank == 0 else {}
        cuda = {int(k[len("rng.cuda."):]): v for k, v in tensors.items() if k.startswith("rng.cuda.")}
        if cuda and torch.cuda.is_available() and rank == 0:
            dev = torch.cuda.current_device()
            if dev in cuda:
                mine["cuda"] = cuda[dev]
            else:
                warnings.warn(f"checkpoint has CUDA RNG states for {len(cuda)} GPU(s), none for cuda:{dev}; "
                              "this GPU's dropout draws continue from a fresh seed", stacklevel=3)
        saved = int(meta.get("world_size", 1))  # one shared state, written by this many processes
    else:
        mine = {k[len(f"rng.rank{rank}."):]: v for k, v in tensors.items() if k.startswith(f"rng.rank{rank}.")}
    if saved != world_size:
        fresh = "ranks without saved RNG states keep their fresh per-rank seeds; " if world_size > saved else ""
        warnings.warn(f"checkpoint written by {saved} process(es), resumed by {world_size}: {fresh}"
                      "the run continues, but not bitwise as an uninterrupted one", stacklevel=3)
    if "torch" in mine:
        torch.set_rng_state(mine["torch"])
    if "cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])


def restore_state(tensors: dict, meta: dict, net, ema, opt, generators: dict[str, torch.Generator],
                  rank: int = 0, world_size: int = 1, extras: dict[str, torch.nn.Module] | None = None) -> None:
    """Put a `pack_state` checkpoint back, bit for bit (this rank's own RNG states; old single-state files too)."""

    def sub(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    net.load_state_dict(sub("net."))
    ema.load_state_dict(sub("ema."))
    for name, module in (extras or {}).items():
        if not sub(f"{name}."):
            raise CheckpointError(f"{meta.get('_json', 'checkpoint')}: has no '{name}' weights to resume "
                                  "(it was trained without them); start over or leave them off")
        module.load_state_dict(sub(f"{name}."))
    state: dict[int, dict] = {}
    for key, v in sub("opt.").items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": dict(sorted(state.items())), "param_groups": meta["optimizer"]["param_groups"]})
    _restore_rank_rng(tensors, meta, rank, world_size)
    devices = meta["rng"].get("generator_devices", {})
    for name, g in generators.items():
        was = devices.get(name, "cpu")
        if torch.device(was).type == g.device.type:
            g.set_state(tensors[f"rng.gen.{name}"])
        else:  # a CPU generator's state does not fit a CUDA one: same seed, another stream
            warnings.warn(f"RNG {name!r} was on {was}, now on {g.device}: its draws continue from the run's seed, "
                          "not bitwise as an uninterrupted run", stacklevel=2)
    kind, *rest = meta["rng"]["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), *rest))
    version, internal, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))


def load_denoiser(path_or_train_dir: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """An EDMPrecond in eval mode from a checkpoint, an EMA snapshot, or a training folder (its newest EMA)."""
    path = Path(path_or_train_dir)
    if path.is_dir():
        snap = latest_good_snapshot(path) if ema else None
        if snap is not None:
            path = snap[1]
        else:
            found = latest_good(path)
            if found is None:
                raise CheckpointError(f"{path}: no checkpoint or EMA snapshot here (train first: emojidiff train)")
            path = Path(found[1]["_json"])
    tensors, meta = load(path)
    if meta["format"] == EMA_FORMAT and not ema:
        raise CheckpointError(f"{path}: an EMA-only snapshot; pass ema=True or a full checkpoint for raw weights")
    prefix = "ema." if ema else "net."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model_cfg = ModelConfig(**meta["model"])
    net = build_denoiser(model_cfg, meta["width"], meta["img_resolution"], meta["sigma_data"])
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False)
