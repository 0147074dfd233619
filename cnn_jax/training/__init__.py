"""Training: config → objects, the loop, steps, checkpoints and restored models."""
