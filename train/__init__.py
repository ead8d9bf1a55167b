"""Shared training loop, checkpoints and evaluation."""
