"""Evaluation stage of the study."""
