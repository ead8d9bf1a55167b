"""``quality``: CLAIRE-DSA-style image properties of DSA runs (van den Berg et al., 2025).

A DSA run's MinIP goes through a small MONAI ResNet trunk with one classification
head per label (contrast, projection, skull in field, motion, shutter, device,
burned-in text, noise, suitable for downstream AI).  The label schema is config;
codes come from :mod:`ai.core.codes`.
"""
