"""Devices and clusters: the plan (which GPUs, or CPU replicas), setting up the strategy, multi-worker."""
