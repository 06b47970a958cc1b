"""Exponential moving average of the weights (torch.optim.swa_utils.AveragedModel).

The decay warms up as in timm's ModelEmaV3, min(decay, (1 + n) / (10 + n)),
so that the short runs of a small dataset still get an average of recent
weights rather than of the pretrained start.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def make_ema(net: nn.Module, decay: float) -> AveragedModel:
    def ema(averaged: Tensor, current: Tensor, n_averaged: Tensor | int) -> Tensor:
        n = float(n_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    # buffers (BatchNorm statistics) are copied from the live model, not averaged
    return AveragedModel(net, avg_fn=ema, use_buffers=False)
