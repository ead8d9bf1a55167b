"""``keyframes``: start, apex and end keyframes of coronary angiography runs (STA-IPCon).

Zhang et al., IEEE TMI 2023 (``methods-notes.md`` §2) on MONAI blocks: per-frame vessel
maps (a small ``BasicUNet``) -> 64 x 64 maps -> long-term spatiotemporal attention
(ConvLSTM + attention map) -> patch-wise projection -> a temporal transformer pyramid
with local windows -> ActionFormer heads for two segments (contrast filling, wash-out).
Start = filling start, apex = where they meet, end = wash-out end.

Files: ``module.py`` (the :class:`~ai.keyframes.module.KeyframesModule` contract),
``network.py``, ``detection.py`` (targets, losses, decoding), ``metrics.py``,
``transforms.py``, ``synthetic.py`` (coronary cine runs with exact keyframes),
``datasets.py`` (``vessel.json`` + ``<id>.npy``), ``dicomio.py`` (XA writer),
``render.py`` (the montage) and ``model/`` (the bundled version).
"""
