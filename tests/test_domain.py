"""The domain feature network: it learns the parents, its features separate them, and it is cached per run."""

import numpy as np
import pandas as pd

import emojidiff
from emojidiff.evaluation.domain import domain_features, domain_net_for_run, parent_labels, train_domain_net


def toy_fusions(n_faces=4, seed=0):
    """Synthetic 'fusions': parent A sets the top half's colour, parent B the bottom half's."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n_faces, 3))
    images, rows = [], []
    for a in range(n_faces):
        for b in range(n_faces):
            for _ in range(3):
                im = np.empty((32, 32, 3), np.uint8)
                im[:16], im[16:] = colours[a], colours[b]
                images.append(np.clip(im + rng.normal(0, 8, im.shape), 0, 255).astype(np.uint8))
                rows.append({"parent_a": f"f{a}", "parent_b": f"f{b}", "split": "train"})
    return np.stack(images), pd.DataFrame(rows)


def test_parent_classifier_learns_the_parts():
    images, manifest = toy_fusions()
    net, info = train_domain_net(images, manifest, epochs=12, batch_size=16, lr=5e-3, progress=False)
    assert info["train"]["acc_both"] > 0.9
    feats = domain_features(net, images)
    assert feats.shape == (len(images), 128) and np.isfinite(feats).all()
    # features of the same fusion lie closer than those of different fusions: FID within < FID across
    la, lb, _ = parent_labels(manifest)
    same = (la == 0) | (la == 1)
    assert emojidiff.fid_from_features(feats[same][::2], feats[same][1::2]) < emojidiff.fid_from_features(
        feats[same], feats[~same])


def test_domain_net_is_cached_per_run(tmp_path):
    images, manifest = toy_fusions(3)

    class DS:  # the parts of FusionDataset this uses
        def __init__(self):
            self.images, self.manifest, self.info = images, manifest, {"cache_key": "toy"}

    cfg = emojidiff.config_from_dict({"eval": {"domain_epochs": 1}})
    layout = emojidiff.RunLayout(tmp_path)
    net1, info1 = domain_net_for_run(cfg, layout, DS(), progress=False)
    files = sorted(p.name for p in (tmp_path / "metrics" / "domain").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    net2, info2 = domain_net_for_run(cfg, layout, DS(), progress=False)
    assert info2["key"] == info1["key"]
    np.testing.assert_array_equal(domain_features(net1, images[:4]), domain_features(net2, images[:4]))
