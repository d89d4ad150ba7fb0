"""The parts of a training run: recipe, sampler, batches, checkpoints, logs, validation."""
