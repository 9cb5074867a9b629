"""Data stage: the emoji sources, their fusions and the training dataset."""
