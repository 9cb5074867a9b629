"""Sampling from EMA snapshots: files, reuse, per-image seeds, loading and listing."""

import numpy as np
import pytest
import torch

import emojidiff.training.checkpoint as ckpt
from emojidiff.config import ModelConfig, SampleConfig
from emojidiff.evaluation.sampling import list_samples, load_samples, pick_snapshots, sample_checkpoint
from emojidiff.layout import RunLayout
from emojidiff.model.edm import build_denoiser


def make_snapshot(train_dir, kimg: float, step: int, seed: int = 0):
    """A tiny random EMA snapshot in the training code's format (8 px, width 16)."""
    mc = ModelConfig(widths=[16], channel_mult=[1], num_blocks=1, attn_resolutions=[])
    torch.manual_seed(seed)
    net = build_denoiser(mc, 16, 8, 0.5)
    meta = {"kimg": kimg, "width": 16, "img_resolution": 8, "sigma_data": 0.5, "model": mc.__dict__}
    ckpt.save(train_dir / f"ema-{step:08d}", {f"ema.{k}": v for k, v in net.state_dict().items()}, meta,
              fmt=ckpt.EMA_FORMAT)
    return train_dir / f"ema-{step:08d}.safetensors"


def sc(num_images: int, num_steps: int = 2, batch_size: int = 4, **kw) -> SampleConfig:
    """The profile's sample section, small."""
    return SampleConfig(num_images=num_images, num_steps=num_steps, batch_size=batch_size, **kw)


def test_sample_checkpoint_writes_reuses_and_is_seeded_per_image(tmp_path):
    layout = RunLayout(tmp_path / "run")
    snap = make_snapshot(layout.train(16), 0.5, 1)
    kw = dict(seed=3, device="cpu", precision="fp32", progress=False)
    path = sample_checkpoint(snap, layout.samples(16), sc(5, 3, 2), **kw)
    assert path.parent == layout.samples(16) and path.with_suffix(".png").is_file()
    images, info = load_samples(layout, 16)
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    assert info["kimg"] == 0.5 and info["num_images"] == 5 and info["seed"] == 3 and info["width"] == 16
    assert images.std() > 0 and len({im.tobytes() for im in images}) == 5  # distinct images, not zeros
    # reused, not redrawn
    mtime = path.stat().st_mtime_ns
    assert sample_checkpoint(snap, layout.samples(16), sc(5, 3, 2), **kw) == path
    assert path.stat().st_mtime_ns == mtime
    # per-image seeds: a smaller set with another batch size gives the first images again
    path3 = sample_checkpoint(snap, tmp_path / "other", sc(3, 3, 3), **kw)
    with np.load(path3) as f:
        np.testing.assert_array_equal(f["images"], images[:3])


def test_load_samples_latest_and_by_kimg(tmp_path):
    layout = RunLayout(tmp_path / "run")
    kw = dict(seed=0, device="cpu", precision="fp32", progress=False)
    for kimg, step in [(1.0, 1), (2.5, 2)]:
        sample_checkpoint(make_snapshot(layout.train(16), kimg, step, seed=step), layout.samples(16), sc(2), **kw)
    assert [s["kimg"] for s in list_samples(layout, 16)] == [1.0, 2.5]
    assert load_samples(layout, 16)[1]["kimg"] == 2.5
    a, info = load_samples(tmp_path / "run", 16, kimg=1.0)
    assert info["kimg"] == 1.0 and a.shape == (2, 8, 8, 3)
    with pytest.raises(FileNotFoundError, match="no samples at 7"):
        load_samples(layout, 16, kimg=7.0)
    with pytest.raises(FileNotFoundError, match="emojidiff sample"):
        load_samples(layout, 32)
    with pytest.raises(ValueError, match="num_images"):
        sample_checkpoint(make_snapshot(layout.train(16), 3.0, 3), layout.samples(16), sc(0))
    with pytest.raises(TypeError, match="SampleConfig"):  # the section, not its fields
        sample_checkpoint(make_snapshot(layout.train(16), 3.0, 3), layout.samples(16), 2)


def test_torchrun_two_ranks_give_the_same_images(tmp_path):
    import subprocess
    import sys

    snap = make_snapshot(tmp_path / "train", 0.5, 1)
    script = tmp_path / "sample.py"
    script.write_text(
        "import sys\nfrom emojidiff.config import SampleConfig\n"
        "from emojidiff.evaluation.sampling import sample_checkpoint\n"
        f"sample_checkpoint({str(snap)!r}, sys.argv[1], SampleConfig(num_images=5, num_steps=2, batch_size=2), "
        "seed=0, device='cpu', precision='fp32', progress=False)\n")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, str(script), str(tmp_path / "two")], check=True, capture_output=True, timeout=240)
    one = sample_checkpoint(snap, tmp_path / "one", sc(5, 2, 5), seed=0, device="cpu", precision="fp32",
                            progress=False)
    (two,) = (tmp_path / "two").glob("*.npz")
    with np.load(one) as a, np.load(two) as b:
        np.testing.assert_array_equal(a["images"], b["images"])
        assert '"world_size": 2' in str(b["info"])


def test_sample_from_a_damaged_newest_snapshot_names_it_and_takes_the_previous_good_one(tmp_path, repo, capsys):
    from emojidiff.cli import main

    layout = RunLayout(tmp_path / "run")
    make_snapshot(layout.train(16), 0.5, 1)
    bad = make_snapshot(layout.train(16), 1.0, 2, seed=1)
    bad.write_bytes(bad.read_bytes()[:-100])  # a disk error or a copy cut short
    params = tmp_path / "smoke.yaml"
    params.write_text((repo / "params" / "smoke.yaml").read_text().replace("device: auto", "device: cpu"))
    with pytest.warns(UserWarning) as rec:
        assert main(["sample", "--params", str(params), "--out", str(layout.root), "--num", "3"]) == 0
    said = [str(w.message) for w in rec if "EMA snapshot" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("damaged EMA snapshot ema-00000002.safetensors: ")
    assert "checksum mismatch" in said[0] and said[0].endswith("using the previous good one (ema-00000001.safetensors)")
    assert [s["kimg"] for s in list_samples(layout, 16)] == [0.5]
    assert "w16: " in capsys.readouterr().out
    # Named explicitly, the damaged snapshot is refused by name instead.
    with pytest.raises(ckpt.CheckpointError, match=r"ema-00000002\.safetensors: checksum mismatch"):
        main(["--debug", "sample", "--params", str(params), "--out", str(layout.root), "--checkpoint", str(bad)])


def test_a_retrained_checkpoint_never_reuses_the_old_samples_and_unkeyed_sets_are_redrawn(tmp_path, capsys):
    import json

    from _train_tiny import synthetic_images, tiny_config

    from emojidiff.config import config_from_dict
    from emojidiff.training.train import train_width

    torch.set_num_threads(1)
    layout = RunLayout(tmp_path / "run")
    kw = dict(seed=0, device="cpu", precision="fp32", progress=False)

    def train_and_sample(seed, resume):
        cfg = tiny_config(duration_kimg=0.04, checkpoint_kimg=0.04, snapshot_kimg=0.04)
        train_width(config_from_dict({**cfg, "seed": seed}), layout, 8, resume=resume, images=synthetic_images(),
                    progress=False)
        (snap,) = layout.train(8).glob("ema-*.safetensors")
        path = sample_checkpoint(snap, layout.samples(8), sc(4), **kw)
        with np.load(path) as f:
            return path, f["images"], json.loads(str(f["info"]))

    path, first, info = train_and_sample(3, True)
    assert info["checkpoint_sha256"] == ckpt.read_meta(next(layout.train(8).glob("ema-*.json")))["sha256"]
    again = sample_checkpoint(next(layout.train(8).glob("ema-*.safetensors")), layout.samples(8), sc(4), **kw)
    assert again == path and "redrawing" not in capsys.readouterr().out  # same weights: reused
    path2, second, info2 = train_and_sample(4, False)  # `train --no-resume`: same step, same kimg, new weights
    assert path2 == path and info2["checkpoint_sha256"] != info["checkpoint_sha256"]
    assert not np.array_equal(first, second)
    assert "drawn from other weights" in capsys.readouterr().out
    # a set written before samples recorded their checkpoint: still readable, but redrawn on request
    np.savez(path, images=np.zeros_like(second), info=json.dumps({k: v for k, v in info2.items()
                                                                  if k != "checkpoint_sha256"}))
    assert load_samples(layout, 8)[0].shape == second.shape
    sample_checkpoint(next(layout.train(8).glob("ema-*.safetensors")), layout.samples(8), sc(4), **kw)
    assert "drawn before samples recorded their checkpoint" in capsys.readouterr().out
    np.testing.assert_array_equal(load_samples(layout, 8)[0], second)


def test_the_image_count_flag_is_not_taken_by_torchrun():
    from torch.distributed.run import get_args_parser

    from emojidiff.cli import build_parser

    args = ["sample", "--params", "p.yaml", "--num-images", "5"]
    assert build_parser().parse_args(args).num_images == 5
    launched = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "emojidiff.cli", *args])
    assert launched.training_script_args == args  # torchrun passes it on (it would take --num as --numa-binding)

def test_pick_snapshots():
    snaps = [(float(k), f"p{k}") for k in range(10)]
    assert pick_snapshots(snaps, "all") == snaps
    assert pick_snapshots(snaps, "last") == snaps[-1:]
    picked = pick_snapshots(snaps, "all", max_snapshots=4)
    assert [k for k, _ in picked] == [0.0, 3.0, 6.0, 9.0]
    assert pick_snapshots(snaps[:3], "all", max_snapshots=4) == snaps[:3]
    assert pick_snapshots([], "all") == []



def test_solver_and_guidance_reach_generate_and_the_file_name_only_when_not_default(tmp_path, monkeypatch):
    import json

    import emojidiff.evaluation.sampling as sampling

    calls = []

    def fake_generate(net, n, seed, **kw):  # records what the sampler is asked for; images from the seed
        calls.append(kw)
        return np.full((n, 8, 8, 3), seed, np.uint8)

    monkeypatch.setattr(sampling, "generate", fake_generate)
    layout = RunLayout(tmp_path / "run")
    snap = make_snapshot(layout.train(16), 0.5, 1)
    kw = dict(seed=2, device="cpu", precision="fp32", progress=False)
    plain = sample_checkpoint(snap, layout.samples(16), sc(3), **kw)
    assert plain.name == "kimg00000.500-n3-seed2-steps2.npz"
    assert "solver" not in calls[-1] and "guidance" not in calls[-1] and calls[-1]["S_churn"] == 0.0
    other = sample_checkpoint(snap, layout.samples(16), sc(3, solver="euler", guidance=1.5), **kw)
    assert other.name == "kimg00000.500-n3-seed2-steps2-euler-g1.5.npz"
    assert calls[-1]["solver"] == "euler" and calls[-1]["guidance"] == 1.5
    with np.load(other) as f:
        info = json.loads(str(f["info"]))
    assert info["sampler"] == "euler" and info["guidance"] == 1.5
    sets = list_samples(layout, 16)
    assert sorted((s["solver"], s["guidance"]) for s in sets) == [("euler", 1.5), ("heun", 1.0)]
    assert sample_checkpoint(snap, layout.samples(16), sc(3, guidance=0.0), **kw).name.endswith("-steps2-g0.npz")
    assert "S_churn" not in calls[-2] and calls[-1]["S_churn"] == 0.0  # churn is Heun's alone
    assert sample_checkpoint(snap, layout.samples(16), sc(3, solver="dpmpp2m"), **kw).name.endswith("-dpmpp2m.npz")
    assert ("dpmpp2m", 1.0) in {(s["solver"], s["guidance"]) for s in list_samples(layout, 16)}


def test_sample_snapshots_draws_the_snapshots_evaluation_picks(tmp_path, repo):
    import dataclasses

    from emojidiff.config import load_config
    from emojidiff.evaluation.sampling import sample_snapshots

    cfg = load_config(repo / "params" / "smoke.yaml")
    cfg = dataclasses.replace(cfg, device="cpu", sample=sc(2), eval=dataclasses.replace(cfg.eval, max_snapshots=2))
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no EMA snapshots"):
        sample_snapshots(cfg, layout, 16, progress=False)
    for step in (1, 2, 3):
        make_snapshot(layout.train(16), float(step), step, seed=step)
    done = sample_snapshots(cfg, layout, 16, progress=False)
    assert [k for k, _ in done] == [1.0, 3.0]  # two evenly spaced, the last kept
    assert [s["kimg"] for s in list_samples(layout, 16)] == [1.0, 3.0]
    assert all(p.parent == layout.samples(16) and p.name.endswith(f"-n2-seed{cfg.seed}-steps2.npz") for _, p in done)


def test_sample_figures_are_returned_not_saved(tmp_path):
    from matplotlib.figure import Figure

    from emojidiff.evaluation.sampling import plot_samples_over_training, plot_samples_vs_training

    layout = RunLayout(tmp_path / "run")
    for step in (1, 2):
        sample_checkpoint(make_snapshot(layout.train(16), float(step), step), layout.samples(16), sc(4), seed=0,
                          device="cpu", precision="fp32", progress=False)
    train = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    a = plot_samples_vs_training(layout, 16, train, n=4)
    b = plot_samples_over_training(layout, 16, n=4)
    assert isinstance(a, Figure) and isinstance(b, Figure)
    assert [t.get_text() for t in b.axes[0].get_yticklabels()] == ["1 kimg", "2 kimg"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_compiled_sampling_matches_eager_says_so_and_falls_back_when_compiling_fails(tmp_path, monkeypatch):
    import json

    layout = RunLayout(tmp_path / "run")
    snap = make_snapshot(layout.train(16), 0.5, 1)
    kw = dict(seed=1, device="cpu", precision="fp32", progress=False)
    eager = sample_checkpoint(snap, tmp_path / "eager", sc(4, 2, 4), **kw)
    compiled = sample_checkpoint(snap, tmp_path / "compiled", sc(4, 2, 4, compile=True), **kw)
    with np.load(eager) as e, np.load(compiled) as c:
        assert "compiled" not in json.loads(str(e["info"])) and json.loads(str(c["info"]))["compiled"] is True
        # uint8 images of the same ODE: equal up to a rounding step on a few pixels
        assert np.abs(e["images"].astype(int) - c["images"].astype(int)).max() <= 1

    def broken(module, **kw):  # what torch.compile gives where no C++ compiler is found: fails on the first call
        def fail(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match=r"sample\.compile: torch\.compile failed .*sampling runs eagerly"):
        fallback = sample_checkpoint(snap, tmp_path / "fallback", sc(4, 2, 4, compile=True), **kw)
    with np.load(eager) as e, np.load(fallback) as f:
        np.testing.assert_array_equal(f["images"], e["images"])
