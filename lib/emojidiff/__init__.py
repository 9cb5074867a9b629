"""emojidiff: learn to create new emoji faces with an EDM diffusion model, and measure whether it creates or copies."""

from emojidiff.config import Config, ConfigError, config_from_dict, load_config, save_resolved
from emojidiff.layout import RunLayout

# --- data (issue 3) ---
from emojidiff.data.dataset import FusionDataset, FusionImages, build_dataset, dataset_from_config, measure_sigma_data
from emojidiff.data.emoji_sources import EmojiSourceError, available_styles, render_face, select_faces
from emojidiff.data.fusion import FusionError, analyse_face, fuse

# --- EDM model (issue 4) ---
from emojidiff.model.edm import EDMPrecond, build_denoiser, edm_loss
from emojidiff.model.sampler import euler_sample, generate, heun_sample, karras_sigmas
from emojidiff.model.unet import UNet, count_parameters

# --- training (issue 5) ---
from emojidiff.training.checkpoint import list_snapshots, load_denoiser
from emojidiff.training.train import train

# --- evaluation (issue 6) ---
from emojidiff.evaluation.domain import domain_features, domain_net_for_run
from emojidiff.evaluation.evaluate import check_claims, plot_over_training, sample_snapshots
from emojidiff.evaluation.features import InceptionUnavailable, inception_features, load_inception
from emojidiff.evaluation.ideal import IdealMemoriser, ideal_memoriser
from emojidiff.evaluation.metrics import fid_from_features, kid_from_features, memorisation_rates, nearest_mse
from emojidiff.evaluation.sampling import list_samples, load_samples, sample_checkpoint

# --- memorisation and human study (issue 7) ---
from emojidiff.study.browser import BrowserWidget, NeighbourBrowser
from emojidiff.study.human_study import (
    StudySession,
    StudyWidget,
    bradley_terry,
    load_answers,
    make_pairs,
    plot_study,
    simulate_answers,
    win_rates,
)
from emojidiff.study.memorisation import (
    heldout_probe,
    plot_min_mse_histograms,
    plot_probe,
    plot_quantile_examples,
    probe_shares,
    probe_table,
    split_images,
)
from emojidiff.study.tracing import plot_trace, trace_sample

# --- create or copy, measured soundly (issue 12) ---
from emojidiff.evaluation.copies import classify_samples, control_table, probe_verdict, rate_interval, reference_set
