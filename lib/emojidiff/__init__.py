"""emojidiff: learn to create new emoji faces with an EDM diffusion model, and measure whether it creates or copies."""

from emojidiff.config import Config, ConfigError, config_from_dict, load_config, save_resolved
from emojidiff.layout import RunLayout

# --- data (issue 3) ---

# --- EDM model (issue 4) ---

# --- training (issue 5) ---

# --- evaluation (issue 6) ---

# --- memorisation and human study (issue 7) ---
