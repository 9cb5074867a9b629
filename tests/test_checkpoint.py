"""Checkpoints: atomic safetensors + JSON with checksum, refusal of pickles and damaged files, exact restore."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from _train_tiny import tiny_config

import emojidiff
from emojidiff.config import config_from_dict
from emojidiff.training import checkpoint as ckpt
from emojidiff.training.ema import make_ema


def _denoiser(seed=0):
    torch.manual_seed(seed)
    return emojidiff.build_denoiser(config_from_dict(tiny_config()).model, 8, 32, 0.6)


def _meta():
    model = config_from_dict(tiny_config()).to_dict()["model"]
    return {"width": 8, "img_resolution": 32, "sigma_data": 0.6, "model": model, "kimg": 1.5, "nimg": 1500, "step": 3}


def test_save_writes_tensors_and_json_with_format_and_checksum(tmp_path):
    path = ckpt.save(tmp_path / "ckpt-00000003", {"a": torch.arange(5.0)}, {"step": 3})
    tensors, meta = ckpt.load(path)
    assert meta["format"] == ckpt.FORMAT and meta["step"] == 3
    assert meta["sha256"] == ckpt.sha256_file(tmp_path / "ckpt-00000003.safetensors")
    assert torch.equal(tensors["a"], torch.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000003.json", "ckpt-00000003.safetensors"]


def test_truncated_checkpoint_is_refused_and_latest_good_falls_back(tmp_path):
    ckpt.save(tmp_path / "ckpt-00000001", {"a": torch.zeros(1000)}, {"step": 1})
    ckpt.save(tmp_path / "ckpt-00000002", {"a": torch.ones(1000)}, {"step": 2})
    bad = tmp_path / "ckpt-00000002.safetensors"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt-00000002\.safetensors: checksum mismatch \(truncated"):
        ckpt.load(bad)
    with pytest.warns(UserWarning, match=r"skipping bad checkpoint ckpt-00000002\.json"):
        tensors, meta = ckpt.latest_good(tmp_path)
    assert meta["step"] == 1 and torch.equal(tensors["a"], torch.zeros(1000))


def test_missing_or_garbled_json_and_missing_tensors_are_refused(tmp_path):
    ckpt.save(tmp_path / "x", {"a": torch.zeros(3)}, {})
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint metadata"):
        ckpt.load(tmp_path / "x.safetensors")
    (tmp_path / "x.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no x.json beside it"):
        ckpt.load(tmp_path / "x.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, kind):
    path = tmp_path / "model.safetensors"  # even under a safetensors name
    if kind == "torch.save":
        torch.save({"a": torch.zeros(2)}, path)
    else:
        path.write_bytes(pickle.dumps({"a": [1, 2]}))
    (tmp_path / "model.json").write_text('{"format": "emojidiff-checkpoint/1", "tensors": "model.safetensors"}')
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors is a pickle / torch\.save file; refused"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        emojidiff.load_denoiser(path)


def test_pack_and_restore_bring_back_weights_optimizer_and_every_rng(tmp_path):
    net = _denoiser(0)
    ema = make_ema(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3, 32, 32), torch.ones(2)).square().mean().backward()
    opt.step()
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    tensors, extra = ckpt.pack_state(net, ema, opt, {"noise": gen})
    ckpt.save(tmp_path / "ckpt-1", tensors, {**_meta(), **extra})
    expect = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))

    net2, gen2 = _denoiser(1), torch.Generator().manual_seed(0)
    ema2 = make_ema(net2)
    opt2 = torch.optim.Adam(net2.parameters(), lr=5.0)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    t, meta = ckpt.load(tmp_path / "ckpt-1.json")
    ckpt.restore_state(t, meta, net2, ema2, opt2, {"noise": gen2})
    assert ckpt.weights_sha256(net2) == ckpt.weights_sha256(net)
    assert ckpt.weights_sha256(ema2) == ckpt.weights_sha256(ema)
    assert opt2.param_groups[0]["lr"] == 1e-3
    sd, sd2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[i][k], sd2[i][k]) for i in sd for k in sd[i])
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen2))
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2] == expect[2]
    assert torch.equal(got[3], expect[3])


def test_ema_snapshots_load_as_denoisers_and_are_listed(tmp_path):
    net = _denoiser(0)
    for step, kimg in [(3, 1.5), (6, 3.0)]:
        meta = {**_meta(), "step": step, "kimg": kimg}
        ckpt.save(tmp_path / f"ema-{step:08d}", {f"ema.{k}": v for k, v in net.state_dict().items()}, meta,
                  fmt=ckpt.EMA_FORMAT)
    snaps = emojidiff.list_snapshots(tmp_path)
    assert [k for k, _ in snaps] == [1.5, 3.0] and snaps[-1][1].name == "ema-00000006.safetensors"
    d = emojidiff.load_denoiser(tmp_path)
    assert isinstance(d, emojidiff.EDMPrecond) and not d.training and d.sigma_data == 0.6
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(d(x, 1.0), net.eval()(x, 1.0))
    with pytest.raises(ckpt.CheckpointError, match="EMA-only snapshot"):
        emojidiff.load_denoiser(snaps[0][1], ema=False)


def test_thinning_keeps_a_doubling_series_and_the_last():
    assert ckpt.thin([1, 2, 3], 5) == {1, 2, 3}
    kept = ckpt.thin(list(range(1, 41)), 10)
    assert len(kept) <= 10 and 40 in kept and kept == {8, 16, 24, 32, 40}
    assert ckpt.thin(list(range(1, 42)), 10) == {8, 16, 24, 32, 40, 41}



def test_a_safetensors_file_whose_first_byte_looks_like_pickle_still_loads(tmp_path):
    # The first 8 bytes are the header length; lengthen a tensor name until its low byte is 0x80.
    for pad in range(300):
        path = ckpt.save(tmp_path / "ckpt-00000001", {"a" * (1 + pad): torch.arange(3.0)}, {"step": 1})
        if (tmp_path / "ckpt-00000001.safetensors").read_bytes()[:1] == b"\x80":
            break
    else:
        raise AssertionError("no header length with a low byte of 0x80 was reached")
    tensors, _ = ckpt.load(path)
    assert torch.equal(tensors["a" * (1 + pad)], torch.arange(3.0))


def test_a_safetensors_file_truncated_inside_its_header_is_called_truncated_not_a_pickle(tmp_path):
    for pad in range(300):  # a header length whose low byte is 0x80, the pickle magic
        path = ckpt.save(tmp_path / "ckpt-00000001", {"a" * (1 + pad): torch.arange(3.0)}, {"step": 1})
        if (tmp_path / "ckpt-00000001.safetensors").read_bytes()[:1] == b"\x80":
            break
    tensors = tmp_path / "ckpt-00000001.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])  # cut inside the JSON header
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt-00000001\.safetensors: truncated inside its safetensors "
                                                   r"header") as info:
        ckpt.load(path)
    assert "pickle" not in str(info.value)
    tensors.write_bytes(b"\x80\x04")  # cut inside the length field
    with pytest.raises(ckpt.CheckpointError, match=r"truncated \(2 bytes"):
        ckpt.load(path)


def _corrupt(json_path):
    tensors = json_path.with_suffix(".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-7])


def test_cleanup_keeps_the_newest_two_that_verify_and_moves_unreadable_ones_to_bad(tmp_path):
    for step in range(1, 6):
        ckpt.save(tmp_path / f"ckpt-{step:08d}", {"a": torch.full((100,), float(step))}, {"step": step})
    _corrupt(tmp_path / "ckpt-00000004.json")
    (tmp_path / "ckpt-00000003.json").write_text("{torn")
    with pytest.warns(UserWarning) as rec:
        ckpt.prune(tmp_path, keep=2)
    assert [str(w.message).split(":")[0] for w in rec] == [
        f"unreadable checkpoint ckpt-0000000{s}.json moved to {tmp_path / 'bad'}" for s in (4, 3)]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.json")) == ["ckpt-00000002.json", "ckpt-00000005.json"]
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == [
        "ckpt-00000003.json", "ckpt-00000003.safetensors", "ckpt-00000004.json", "ckpt-00000004.safetensors"]


def test_latest_good_can_move_every_unreadable_checkpoint_aside_and_says_none_is_usable(tmp_path):
    for step in (1, 2):
        _corrupt(ckpt.save(tmp_path / f"ckpt-{step:08d}", {"a": torch.zeros(100)}, {"step": step}))
    with pytest.warns(UserWarning) as rec:
        assert ckpt.latest_good(tmp_path, move_bad=True) is None
    said = [str(w.message) for w in rec]
    assert len(said) == 2 and said[0].startswith("skipping bad checkpoint ckpt-00000002.json")
    assert said[0].endswith(f"moved to {tmp_path / 'bad'}; falling back to the previous one")
    assert said[1].startswith("skipping bad checkpoint ckpt-00000001.json") and "checksum mismatch" in said[1]
    assert said[1].endswith("no usable checkpoint is left")
    assert not list(tmp_path.glob("ckpt-*")) and len(list((tmp_path / "bad").glob("ckpt-*"))) == 4


def test_orphaned_temporary_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {f".ckpt-00000005.safetensors.tmp{dead.pid}": False, f".kimg0.5-n4.tmp{dead.pid}.npz": False,
                 f".ckpt-00000010.json.tmp{alive.pid}": True, f".ema-00000010.json.tmp{os.getpid()}": True,
                 "ckpt-00000005.json": True}
        for name in names:
            (tmp_path / name).write_text("x")
        gone = ckpt.remove_orphans(tmp_path)
        assert sorted(p.name for p in gone) == sorted(n for n, keep in names.items() if not keep)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, keep in names.items() if keep)
    finally:
        alive.kill()
        alive.wait()


# --- issue 17: a writer killed before its rename, and a removal killed half way ---


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize("failure", ["rename fails", "killed mid-write"])
def test_a_writer_killed_before_its_rename_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch, failure):
    import os
    from pathlib import Path

    path = ckpt.save(tmp_path / "ckpt-00000001", {"a": torch.zeros(1000)}, {"step": 1})
    before = _files(tmp_path)
    if failure == "rename fails":
        def boom(*a, **k):
            raise OSError("killed before the rename")

        monkeypatch.setattr(os, "replace", boom)
        monkeypatch.setattr(os, "rename", boom)
    else:
        real = ckpt.save_file

        def torn(tensors, filename, *a, **k):  # half the bytes reach the disk, then the process dies
            real(tensors, filename, *a, **k)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError("killed mid-write")

        monkeypatch.setattr(ckpt, "save_file", torn)
    with pytest.raises(OSError, match="killed"):
        ckpt.save(tmp_path / "ckpt-00000001", {"a": torch.ones(1000)}, {"step": 2})
    monkeypatch.undo()
    assert _files(tmp_path) == before  # the destination never held the new (or partial) bytes
    tensors, meta = ckpt.load(path)
    assert meta["step"] == 1 and torch.equal(tensors["a"], torch.zeros(1000))


def test_remove_killed_half_way_leaves_no_commit_marker_without_tensors(tmp_path, monkeypatch):
    import os
    import warnings

    ckpt.save(tmp_path / "ckpt-00000001", {"a": torch.zeros(10)}, {"step": 1})
    path = ckpt.save(tmp_path / "ckpt-00000002", {"a": torch.ones(10)}, {"step": 2})
    real, calls = os.unlink, []

    def dies_after_one(p, *a, **k):
        calls.append(os.path.basename(p))
        if len(calls) > 1:
            raise OSError("killed between the two deletions")
        return real(p, *a, **k)

    monkeypatch.setattr(os, "unlink", dies_after_one)
    monkeypatch.setattr(os, "remove", dies_after_one)
    with pytest.raises(OSError, match="killed"):
        ckpt.remove(path)
    monkeypatch.undo()
    assert calls[0] == "ckpt-00000002.json"  # the commit marker went first
    assert not path.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing half-deleted is even looked at
        _, meta = ckpt.latest_good(tmp_path)
    assert meta["step"] == 1


class _FakeCuda:
    """torch.cuda's RNG functions for a machine with `count` GPUs, this process on `current`."""

    def __init__(self, monkeypatch, count: int, current: int = 0):
        self.count, self.current, self.set = count, current, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.state(self.current))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.state(i) for i in range(self.count)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": self.set.append(s.clone()))

        def set_all(states):  # torch's own: one state per visible GPU, IndexError past them
            for i, s in enumerate(states):
                if i >= self.count:
                    raise IndexError(f"no GPU {i}")
                self.set.append(s.clone())

        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)

    @staticmethod
    def state(i: int) -> torch.Tensor:
        return torch.full((16,), 10 + i, dtype=torch.uint8)


def _tiny_state():
    net = torch.nn.Linear(2, 2)
    return net, make_ema(net), torch.optim.Adam(net.parameters())


def test_each_rank_gets_back_its_own_cpu_and_cuda_rng_states(tmp_path, monkeypatch):
    fake = _FakeCuda(monkeypatch, count=2, current=1)
    states = []
    for r in range(2):  # what each rank's rank_rng_state() gives, gathered to rank 0
        torch.manual_seed(100 + r)
        fake.current = r
        states.append(ckpt.rank_rng_state())
    assert [torch.equal(s["cuda"], _FakeCuda.state(r)) for r, s in enumerate(states)] == [True, True]
    tensors, extra = ckpt.pack_state(*_tiny_state(), {}, states)
    assert {"rng.rank0.torch", "rng.rank1.torch", "rng.rank0.cuda", "rng.rank1.cuda"} <= set(tensors)
    ckpt.save(tmp_path / "ckpt-1", tensors, {**_meta(), **extra})
    t, meta = ckpt.load(tmp_path / "ckpt-1.json")
    torch.manual_seed(101)
    want = torch.rand(4)
    torch.manual_seed(0)
    fake.current = 1
    ckpt.restore_state(t, meta, *_tiny_state(), {}, rank=1, world_size=2)
    assert torch.equal(torch.rand(4), want)  # rank 1's stream, not rank 0's
    assert len(fake.set) == 1 and torch.equal(fake.set[0], _FakeCuda.state(1))


def test_an_old_checkpoint_of_four_gpus_resumes_on_one_without_index_error(tmp_path, monkeypatch):
    net, ema, opt = _tiny_state()
    torch.manual_seed(5)
    want = torch.rand(4)
    torch.manual_seed(5)
    tensors, extra = ckpt.pack_state(net, ema, opt, {})
    # the layout written before per-rank states: rng.torch, and rng.cuda.<i> for every visible GPU
    old = {k: v for k, v in tensors.items() if not k.startswith("rng.rank")}
    old["rng.torch"] = tensors["rng.rank0.torch"]
    old |= {f"rng.cuda.{i}": _FakeCuda.state(i) for i in range(4)}
    extra["rng"] = {k: extra["rng"][k] for k in ("numpy", "python")}
    ckpt.save(tmp_path / "ckpt-1", old, {**_meta(), **extra})
    t, meta = ckpt.load(tmp_path / "ckpt-1.json")
    fake = _FakeCuda(monkeypatch, count=1)
    torch.manual_seed(0)
    ckpt.restore_state(t, meta, *_tiny_state(), {})
    assert torch.equal(torch.rand(4), want)
    assert len(fake.set) == 1 and torch.equal(fake.set[0], _FakeCuda.state(0))
    fake.current, fake.set = 6, []  # no state for this GPU: a warning, not a crash
    with pytest.warns(UserWarning, match=r"CUDA RNG states for 4 GPU\(s\), none for cuda:6"):
        ckpt.restore_state(t, meta, *_tiny_state(), {})
    assert fake.set == []


def test_another_world_size_resumes_with_a_warning_and_keeps_fresh_seeds_for_new_ranks(tmp_path):
    states = []
    for r in range(2):
        torch.manual_seed(200 + r)
        states.append(ckpt.rank_rng_state())
    tensors, extra = ckpt.pack_state(*_tiny_state(), {}, states)
    ckpt.save(tmp_path / "ckpt-1", tensors, {**_meta(), **extra})
    t, meta = ckpt.load(tmp_path / "ckpt-1.json")
    torch.manual_seed(200)
    want0 = torch.rand(4)
    with pytest.warns(UserWarning, match=r"written by 2 process\(es\), resumed by 1"):
        ckpt.restore_state(t, meta, *_tiny_state(), {}, rank=0, world_size=1)
    assert torch.equal(torch.rand(4), want0)
    parts = _tiny_state()
    torch.manual_seed(7)  # this rank's fresh per-rank seed
    fresh = torch.get_rng_state()
    with pytest.warns(UserWarning, match=r"resumed by 3: ranks without saved RNG states keep their fresh"):
        ckpt.restore_state(t, meta, *parts, {}, rank=2, world_size=3)
    assert torch.equal(torch.get_rng_state(), fresh)


def test_a_generator_saved_on_another_device_type_warns_instead_of_failing(tmp_path):
    gen = torch.Generator().manual_seed(3)
    tensors, extra = ckpt.pack_state(*_tiny_state(), {"noise": gen})
    assert extra["rng"]["generator_devices"] == {"noise": "cpu"}
    extra["rng"]["generator_devices"] = {"noise": "cuda:0"}  # as a GPU run writes it
    ckpt.save(tmp_path / "ckpt-1", tensors, {**_meta(), **extra})
    t, meta = ckpt.load(tmp_path / "ckpt-1.json")
    g = torch.Generator().manual_seed(11)
    before = g.get_state()
    with pytest.warns(UserWarning, match=r"RNG 'noise' was on cuda:0, now on cpu"):
        ckpt.restore_state(t, meta, *_tiny_state(), {"noise": g})
    assert torch.equal(g.get_state(), before)
