"""GRSer training: group sampler, losses, the loop with checkpoints and resume."""
