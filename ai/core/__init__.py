"""Shared AI core: the module contract, model versions and preprocessing."""
