"""Checkpoints: their files, when they are written, and resuming from them."""
