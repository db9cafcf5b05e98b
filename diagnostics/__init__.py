"""Hardware and software-stack knowledge for multi-GPU TensorFlow: inventory, selection, checks.

Nothing in this package imports TensorFlow or the training package at module level.
"""
