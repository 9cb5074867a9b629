"""Distributed training: two CPU processes under torchrun (gloo) agree and match one process with the same batch."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_tiny import synthetic_images, tiny_config
from safetensors.torch import load_file

from emojidiff.config import config_from_dict
from emojidiff.layout import RunLayout
from emojidiff.training import distributed
from emojidiff.training.train import train_width

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


RANKED = '''
import hashlib, importlib, json, os, sys, time
import torch
sys.path.insert(0, {tests!r})
from _train_tiny import synthetic_images
from emojidiff.training import distributed
from emojidiff.config import config_from_dict
from emojidiff.layout import RunLayout
T = importlib.import_module("emojidiff.training.train")
mode, cfg, out, log = sys.argv[1], config_from_dict(json.loads(sys.argv[2])), sys.argv[3], sys.argv[4]
rank = int(os.environ["RANK"])
torch.set_num_threads(1)

def training_data(cfg):  # the dataset build, timed: rank 0 slowly, as a real first build
    t0 = time.time()
    time.sleep(1.0 if rank == 0 else 0.0)
    with open(f"{{log}}.build.{{rank}}", "w") as f:
        json.dump([t0, time.time()], f)
    return T.TrainingData(synthetic_images())

T.training_data = training_data
masks, real = [], torch.nn.functional.dropout

def dropout(x, p=0.5, training=True, inplace=False):  # the first training-mode dropout mask of this rank
    y = real(x, p, training, inplace)
    if training and p > 0 and not masks:
        masks.append(hashlib.sha256((y == 0).numpy().tobytes()).hexdigest())
    return y

torch.nn.functional.dropout = dropout
root = out if mode == "shared" else f"{{out}}.rank{{rank}}"  # "private": a node without a shared disk
summary = T.train_width(cfg, RunLayout(root), 8, progress=False)
with open(f"{{log}}.{{rank}}", "w") as f:
    json.dump({{**summary, "mask": masks[0] if masks else None}}, f)
distributed.cleanup(distributed.setup(cfg.device))
'''


def _torchrun(tmp_path, mode: str, cfg: dict, out: Path, check: bool = True):
    script = tmp_path / "ranked.py"
    script.write_text(RANKED.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), mode, json.dumps(cfg), str(out), str(tmp_path / "log")],
                          check=check, env=env, timeout=300, capture_output=True, text=True)


def test_rank0_builds_the_data_ranks_share_weights_not_dropout_and_each_keeps_its_rng(tmp_path):
    cfg = tiny_config(duration_kimg=0.08, checkpoint_kimg=0.04, snapshot_kimg=0.08)
    cfg["model"]["dropout"] = 0.2
    _torchrun(tmp_path, "shared", cfg, tmp_path / "ddp")
    (s0, s1), (b0, b1) = ([json.loads((tmp_path / f"log.{p}{r}").read_text()) for r in (0, 1)] for p in ("", "build."))
    assert b1[0] >= b0[1]  # rank 1 loaded the dataset only after rank 0 had built it
    assert s0["net_sha256"] == s1["net_sha256"] and s0["ema_sha256"] == s1["ema_sha256"]  # one model
    assert s0["mask"] and s1["mask"] and s0["mask"] != s1["mask"]  # but each rank its own dropout masks
    t = load_file(tmp_path / "ddp" / "train" / "w8" / "ckpt-00000010.safetensors")
    assert not torch.equal(t["rng.rank0.torch"], t["rng.rank1.torch"])  # both ranks' RNG states, each its own
    assert "rng.torch" not in t


@pytest.mark.filterwarnings("ignore:resuming.*changed train settings")
def test_rank0_chooses_the_checkpoint_and_a_rank_without_it_fails_naming_it(tmp_path):
    cfg = tiny_config(duration_kimg=0.08, checkpoint_kimg=0.04, snapshot_kimg=0.08)
    torch.set_num_threads(1)
    done = train_width(config_from_dict(cfg), RunLayout(tmp_path / "run"), 8, images=synthetic_images(),
                       progress=False)
    assert done["steps"] == 10
    shutil.copytree(tmp_path / "run", tmp_path / "node.rank0")
    shutil.copytree(tmp_path / "run", tmp_path / "node.rank1")
    for p in (tmp_path / "node.rank1" / "train" / "w8").glob("ckpt-00000010.*"):
        p.unlink()  # rank 1's disk has only the older checkpoint: it must not quietly resume from that one
    res = _torchrun(tmp_path, "private", {**cfg, "train": {**cfg["train"], "duration_kimg": 0.12}},
                    tmp_path / "node", check=False)
    assert res.returncode != 0
    assert re.search(r"rank 1: \S+ckpt-00000010\.json, chosen by rank 0 to resume from, is not on this node's disk",
                     res.stdout + res.stderr)


def test_a_numbered_cuda_device_under_torchrun_is_refused(monkeypatch):
    from emojidiff.config import ConfigError

    with pytest.raises(ConfigError, match=r"device 'cuda:1' under torchrun \(2 processes\).*set device: cuda"):
        distributed.resolve_device("cuda:1", local_rank=0, world_size=2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ConfigError, match="every rank on one GPU"):
        distributed.setup("cuda:0")
    assert distributed.resolve_device("cpu", 3, 4) == torch.device("cpu")


@pytest.mark.parametrize("rank", [0, 1])
def test_evaluate_under_torchrun_runs_on_rank0_alone(monkeypatch, repo, rank):
    import importlib

    import pandas as pd

    ev = importlib.import_module("emojidiff.evaluation.evaluate")
    seen = []
    monkeypatch.setattr(ev, "evaluate", lambda cfg, out: seen.append(os.environ["WORLD_SIZE"]) or pd.DataFrame())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    args = argparse.Namespace(params=str(repo / "params" / "smoke.yaml"), out=None)
    assert ev.cli_main(args) == 0
    assert seen == (["1"] if rank == 0 else [])  # rank 0 as a single process: no group, one metrics.csv writer
