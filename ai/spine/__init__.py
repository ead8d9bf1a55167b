"""spine: lumbar landmarks and grading after CCF-Net (Chen et al., ISBI 2022).

A sagittal T2 series → 11 landmarks (L1–L5 bodies, T12-L1 … L5-S1 discs) in pixel and
patient coordinates, each with its Tianchi grade and probability.

- ``module.py``: the :class:`~ai.core.contract.AIModule` (series selection, predict,
  render, training hooks);
- ``network.py``: CCF-Net on MONAI blocks; ``losses.py``: its loss;
- ``transforms.py``: preprocessing, augmentation, coarse-to-fine encoding and decoding;
- ``synthetic.py`` and ``dicomio.py``: synthetic studies, as samples and as MR DICOM;
- ``datasets.py``: the sample type and the Tianchi challenge format;
- ``geometry.py``: planes, slice order, pixel → patient coordinates;
- ``metrics.py``: CCF-Net's 6 mm recall × AUC and the challenge's 8 mm macro-F1;
- ``labels.py``: landmark order and tag vocabulary; ``render.py``: the overlay;
- ``model/``: the bundled model version (command in its ``metadata.json``).
"""
