"""The network: a small MONAI 2-D ResNet trunk with one linear head per label.

CLAIRE-DSA fine-tunes one ImageNet ResNet per label; MONAI ships no 2-D ImageNet
weights and the node has no network access, so the trunk is trained from scratch
and shared by the heads (the cheap variant methods-notes §4.2 names).  The
default trunk (``layers`` [1, 1, 1, 1], ``block_inplanes`` [16, 32, 64, 128]) is
the tiny configuration measured there at 212 ms per batch of 32 at 128² on 2 CPU
threads; ``monai.networks.nets.resnet18`` is 20× slower.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import ResNet
from torch import nn


class QualityNet(nn.Module):
    """ResNet trunk (pooled features) + ``nn.ModuleDict`` of heads, one per label.

    Parameters
    ----------
    labels : sequence of (name, classes)
        One head with ``len(classes)`` logits per label.
    layers, block_inplanes : sequence of int
        MONAI ``ResNet`` configuration.
    dropout : float
        Dropout before the heads.
    """

    def __init__(self, labels: Sequence[tuple[str, Sequence[str]]],
                 layers: Sequence[int] = (1, 1, 1, 1),
                 block_inplanes: Sequence[int] = (16, 32, 64, 128), dropout: float = 0.1) -> None:
        super().__init__()
        self.trunk = ResNet(
            block="basic", layers=list(layers), block_inplanes=list(block_inplanes),
            spatial_dims=2, n_input_channels=1, conv1_t_size=7, conv1_t_stride=2,
            feed_forward=False,
        )
        self.dropout = nn.Dropout(dropout)
        width = int(block_inplanes[-1])
        self.heads = nn.ModuleDict({name: nn.Linear(width, len(classes))
                                    for name, classes in labels})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.trunk(x))
        return {name: head(features) for name, head in self.heads.items()}


def build_network(config: Mapping[str, Any], labels: Sequence[tuple[str, Sequence[str]]]
                  ) -> QualityNet:
    """:class:`QualityNet` from a config's ``network`` section."""
    net = config.get("network", {})
    return QualityNet(labels, layers=net.get("layers", (1, 1, 1, 1)),
                      block_inplanes=net.get("block_inplanes", (16, 32, 64, 128)),
                      dropout=float(net.get("dropout", 0.1)))
