"""Training: optimisation pieces, step functions, checkpoints, reporting and the loop."""
