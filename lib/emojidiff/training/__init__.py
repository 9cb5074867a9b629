"""Training stage of the study."""
