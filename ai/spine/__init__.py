"""spine: lumbar landmarks and grading after CCF-Net (Chen et al., ISBI 2022).

A sagittal T2 series → 11 landmarks (L1–L5 bodies, T12-L1 … L5-S1 discs) in pixel and
patient coordinates, each with its Tianchi grade and probability.  ``module.py`` holds
the :class:`~ai.core.contract.AIModule`; ``network.py`` the MONAI network;
``transforms.py`` preprocessing and the coarse-to-fine encoding; ``synthetic.py`` and
``dicomio.py`` the synthetic studies; ``datasets.py`` the Tianchi format;
``metrics.py`` the paper's and the challenge's metrics.
"""
