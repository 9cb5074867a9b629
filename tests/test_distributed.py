"""Distributed training: two CPU processes under torchrun (gloo) agree and match one process with the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_tiny import synthetic_images, tiny_config
from safetensors.torch import load_file

from emojidiff import distributed
from emojidiff.config import config_from_dict
from emojidiff.layout import RunLayout
from emojidiff.train import train_width

HELPER = Path(__file__).with_name("_train_tiny.py")


def test_shard_splits_a_global_batch_evenly():
    batch = torch.arange(8)
    parts = [batch[distributed.shard(8, distributed.DistInfo(r, 2))] for r in range(2)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="does not divide"):
        distributed.shard(7, distributed.DistInfo(0, 2))


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup("cpu")
    assert (info.rank, info.world_size, info.is_main, info.active) == (0, 1, True, False)
    assert distributed.mean(2.5, info) == 2.5


def test_two_gloo_processes_match_each_other_and_one_process(tmp_path):
    cfg = tiny_config(duration_kimg=0.08, checkpoint_kimg=0.04, snapshot_kimg=0.08)  # 10 steps of 8 (4 per rank)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(HELPER), json.dumps(cfg), str(tmp_path / "ddp"), str(tmp_path / "summary")],
                   check=True, env=env, timeout=300)
    ranks = [json.loads((tmp_path / f"summary.{r}").read_text()) for r in range(2)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["steps"] == 10
    assert ranks[0]["net_sha256"] == ranks[1]["net_sha256"] and ranks[0]["ema_sha256"] == ranks[1]["ema_sha256"]
    written = sorted(p.name for p in (tmp_path / "ddp" / "train" / "w8").iterdir())  # by rank 0 only, no temps
    assert written == ["ckpt-00000005.json", "ckpt-00000005.safetensors", "ckpt-00000010.json",
                       "ckpt-00000010.safetensors", "ema-00000010.json", "ema-00000010.png",
                       "ema-00000010.safetensors", "metrics.jsonl"]

    torch.set_num_threads(1)
    single = train_width(config_from_dict(cfg), RunLayout(tmp_path / "one"), 8, images=synthetic_images(),
                         progress=False)
    assert single["world_size"] == 1
    a = load_file(tmp_path / "ddp" / "train" / "w8" / "ckpt-00000010.safetensors")
    b = load_file(tmp_path / "one" / "train" / "w8" / "ckpt-00000010.safetensors")
    for k in (k for k in a if k.startswith(("net.", "ema."))):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # the data order and noise were the same: the RNG that drew them ended in the same state
    assert torch.equal(a["rng.gen.noise"], b["rng.gen.noise"])
