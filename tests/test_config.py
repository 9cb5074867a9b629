"""The typed configuration: profiles load, bad ones fail naming the key and the file."""

import math
import re
from pathlib import Path

import pytest
import yaml

from emojidiff.config import Config, ConfigError, config_from_dict, load_config, save_resolved

PROFILES = ["params/smoke.yaml", "params/cpu.yaml", "params/paper.yaml"]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "params").glob("*.yaml")))
def test_profiles_load_and_list_every_key(path, repo):
    cfg = load_config(repo / path)
    raw = yaml.safe_load((repo / path).read_text())
    # Every profile spells out every key, so a reader sees the whole configuration.
    assert set(raw) == set(Config().to_dict())
    for section, values in Config().to_dict().items():
        if isinstance(values, dict):
            assert set(raw[section]) == set(values), f"{path}: section {section}"
    assert cfg.name == raw["name"]


def test_profiles_scale_as_described(repo):
    smoke, cpu, paper = (load_config(repo / p) for p in PROFILES)
    assert paper.model.widths == [32, 64, 128]
    assert cpu.model.widths == [32]
    assert smoke.train.duration_kimg < cpu.train.duration_kimg < paper.train.duration_kimg
    assert math.isinf(cpu.sample.S_max)


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.batch_sise"):
        load_config(p)


def test_unknown_section(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match="unknown key trian"):
        load_config(p)


@pytest.mark.parametrize("text, key", [
    ("train:\n  batch_size: '64'\n", "train.batch_size"),
    ("train:\n  batch_size: 64.0\n", "train.batch_size"),
    ("train:\n  xflip: 1\n", "train.xflip"),
    ("model:\n  widths: 32\n", "model.widths"),
    ("model:\n  widths: [32, big]\n", r"model.widths\[1\]"),
    ("train:\n  lr: fast\n", "train.lr"),
    ("seed: true\n", "seed"),
    ("model:\n  sigma_data: high\n", "model.sigma_data"),
])
def test_wrong_types_are_refused(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.yaml: {key}: expected"):
        load_config(p)


def test_ints_are_accepted_for_floats_and_none_for_optionals():
    cfg = config_from_dict({"train": {"lr": 1}, "model": {"sigma_data": None}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.sigma_data is None


@pytest.mark.parametrize("data, key", [
    ({"data": {"faces": "some"}}, "data.faces"),
    ({"data": {"holdout": 1.5}}, "data.holdout"),
    ({"train": {"precision": "fp8"}}, "train.precision"),
    ({"device": "tpu"}, "device"),
])
def test_bad_values_are_refused(data, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict(data, source="x.yaml")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="profile not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_resolved_config_round_trips(tmp_path, repo):
    cfg = load_config(repo / "params/cpu.yaml")
    path = save_resolved(cfg, tmp_path / "run")
    again = load_config(path)
    assert again == cfg and again.digest() == cfg.digest()
    assert config_from_dict({"seed": 1}).digest() != cfg.digest()


@pytest.mark.parametrize("data, key", [
    ({"seed": -1}, "seed"),
    ({"data": {"styles": []}}, "data.styles"),
    ({"data": {"max_faces": 1}}, "data.max_faces"),
    ({"data": {"gallery_size": 0}}, "data.gallery_size"),
    ({"data": {"gallery_size": 4096}}, "data.gallery_size"),
    ({"model": {"widths": []}}, "model.widths"),
    ({"model": {"widths": [32, 0]}}, "model.widths"),
    ({"model": {"channel_mult": []}}, "model.channel_mult"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"model": {"dropout": -0.1}}, "model.dropout"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"train": {"lr": -1e-3}}, "train.lr"),
    ({"train": {"ema_halflife_kimg": -1}}, "train.ema_halflife_kimg"),
    ({"train": {"ema_rampup_ratio": -0.05}}, "train.ema_rampup_ratio"),
    ({"train": {"lr_rampup_kimg": -1}}, "train.lr_rampup_kimg"),
    ({"train": {"lr_decay_kimg": -1}}, "train.lr_decay_kimg"),
    ({"train": {"ema_std_extra": 0.1}}, "train.ema_std_extra"),  # without a power EMA to pair with
    ({"train": {"ema_std": 0.1, "ema_std_extra": 0.1}}, "train.ema_std_extra"),  # the same profile twice
    ({"sample": {"num_images": 0}}, "sample.num_images"),
    ({"sample": {"batch_size": 0}}, "sample.batch_size"),
    ({"study": {"trace_patch": 4}}, "study.trace_patch"),
])
def test_values_that_would_fail_late_are_refused_at_load_naming_key_and_file(tmp_path, repo, data, key):
    profile = yaml.safe_load((repo / "params/smoke.yaml").read_text())
    for section, values in data.items():
        if isinstance(values, dict):
            profile[section].update(values)
        else:
            profile[section] = values
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ConfigError, match=rf"bad\.yaml: {re.escape(key)} .*got"):
        load_config(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing made before the refusal


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_profile_is_refused_not_taken_for_the_cpu_one(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yaml: empty profile"):
        load_config(path)


def test_the_removed_num_workers_key_loads_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("name: old\ntrain:\n  batch_size: 32\n  num_workers: 4\n")
    with pytest.warns(UserWarning, match=r"old\.yaml: train\.num_workers was removed .*ignored, delete it"):
        cfg = load_config(path)
    assert cfg.train.batch_size == 32 and "num_workers" not in cfg.to_dict()["train"]
    with pytest.raises(ConfigError, match="unknown key model.num_workers"):  # removed only where it was
        config_from_dict({"model": {"num_workers": 4}})


@pytest.mark.parametrize("train, key", [({"batch_gpu": -1}, "train.batch_gpu"),
                                        ({"batch_size": 64, "batch_gpu": 24}, "train.batch_gpu"),
                                        ({"channels_last": "yes"}, "train.channels_last"),
                                        ({"precision": "fp8"}, "train.precision")])
def test_gpu_training_keys_are_checked(train, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_from_dict({"train": train})
    assert config_from_dict({"train": {"batch_size": 64, "batch_gpu": 16, "precision": "fp16"}}).train.batch_gpu == 16


def test_the_paper_profile_accumulates_to_fit_a_24_gb_card_and_checkpoints_rarely(repo):
    paper = load_config(repo / "params/paper.yaml").train
    assert 0 < paper.batch_gpu < paper.batch_size and paper.batch_size % paper.batch_gpu == 0
    assert paper.checkpoint_kimg >= 5 * 50  # was every 50 kimg: ~10 s of 4-GPU training, 2.4 s to save each
    for name in ("cpu", "smoke"):  # the CPU profiles keep today's bitwise step
        t = load_config(repo / f"params/{name}.yaml").train
        assert (t.batch_gpu, t.channels_last, t.deterministic) == (0, "auto", False)


def test_the_removed_copy_rule_keys_load_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("name: old\neval:\n  copy_mse: 0.005\n  copy_ratio: 0.33\nstudy:\n  copy_rule: mse\n")
    with pytest.warns(UserWarning) as caught:
        cfg = load_config(path)
    said = " ".join(str(w.message) for w in caught)
    for key in ("eval.copy_mse", "eval.copy_ratio", "study.copy_rule"):
        assert f"{key} was removed (the copy threshold is chosen from the data" in said
    assert not hasattr(cfg.eval, "copy_mse") and not hasattr(cfg.study, "copy_rule")
