"""The training loop: the traced step, the run's state, optimizers, evaluation, signals."""
