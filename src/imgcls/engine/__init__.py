"""Training engine: train loop, evaluation, checkpoints, distributed, precision, schedules, losses, metrics."""
