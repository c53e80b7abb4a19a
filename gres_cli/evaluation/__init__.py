"""`gres eval`: score a model or saved predictions on a GRD dataset split."""
