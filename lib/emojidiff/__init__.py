"""emojidiff: learn to create new emoji faces with an EDM diffusion model, and measure whether it creates or copies."""

from __future__ import annotations

import importlib
import importlib.util

# Top-level names, imported on first use so that `import emojidiff.runner` (or config, layout) needs no torch.
# A new name: add it to its module's list below.
_EXPORTS = {
    # top level
    "emojidiff.config": ["Config", "ConfigError", "config_from_dict", "load_config", "save_resolved"],
    "emojidiff.layout": ["RunLayout"],
    # data
    "emojidiff.data.dataset": ["FusionDataset", "FusionImages", "build_dataset", "dataset_from_config",
                               "measure_sigma_data"],
    "emojidiff.data.emoji_sources": ["EmojiSourceError", "available_styles", "render_face", "select_faces"],
    "emojidiff.data.fusion": ["FusionError", "analyse_face", "fuse"],
    # model
    "emojidiff.model.edm": ["EDMPrecond", "build_denoiser", "edm_loss"],
    "emojidiff.model.edm2_unet": ["EDM2UNet"],
    "emojidiff.model.sampler": ["euler_sample", "generate", "heun_sample", "karras_sigmas"],
    "emojidiff.model.unet": ["UNet", "count_parameters"],
    # training
    "emojidiff.training.checkpoint": ["list_snapshots", "load_denoiser"],
    "emojidiff.training.train": ["train"],
    # evaluation
    "emojidiff.evaluation.domain": ["domain_features", "domain_net_for_run"],
    "emojidiff.evaluation.evaluate": ["check_claims", "plot_over_training"],
    "emojidiff.evaluation.features": ["InceptionUnavailable", "inception_features", "load_inception"],
    "emojidiff.evaluation.ideal": ["IdealMemoriser", "ideal_memoriser"],
    "emojidiff.evaluation.metrics": ["fid_from_features", "kid_from_features", "memorisation_rates", "nearest_mse"],
    "emojidiff.evaluation.sampling": ["list_samples", "load_samples", "sample_checkpoint", "sample_snapshots"],
    "emojidiff.evaluation.copies": ["classify_samples", "control_table", "probe_verdict", "rate_interval",
                                    "reference_set"],
    # study: memorisation and human study
    "emojidiff.study.browser": ["BrowserWidget", "NeighbourBrowser"],
    "emojidiff.study.human_study": ["StudySession", "StudyWidget", "bradley_terry", "load_answers", "make_pairs",
                                    "plot_study", "simulate_answers", "win_rates"],
    "emojidiff.study.memorisation": ["heldout_probe", "plot_min_mse_histograms", "plot_probe",
                                     "plot_quantile_examples", "probe_shares", "probe_table", "split_images"],
    "emojidiff.study.tracing": ["plot_trace", "trace_sample"],
    "emojidiff.study.kitchen": ["KitchenState", "KitchenWidget", "kitchen"],
    "emojidiff.evaluation.transition": ["compare_models", "disjoint_subsets"],  # issue 14
    "emojidiff.study.transition": ["run_transition"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """Import a top-level name's module (or a subpackage, e.g. emojidiff.evaluation) on first use (PEP 562)."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'emojidiff' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
