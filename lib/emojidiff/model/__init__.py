"""Model stage of the study."""
