import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer
from mmcv.cnn.bricks import DropPath

from .conv_norm import ConvNorm


class FasterNetBlock(nn.Module):
    """FasterNet block: partial 3x3 conv, then a 1x1 MLP, with a residual.

    The partial conv mixes only the first ``channels // partial_div``
    channels spatially and passes the rest through (Chen et al., 2023).

    Args:
        channels (int): Input and output channels.
        expand_ratio (float): MLP hidden width ratio. Defaults to 2.
        partial_div (int): 1 / fraction of channels the partial conv
            touches. Defaults to 4.
        dilation (int): Dilation of the partial conv. Defaults to 1.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        conv_cfg (dict | None): Config of every conv; the partial conv and
            the projection, which no BN follows and fusion leaves alone,
            are built by mmcv's ``build_conv_layer``, the expansion by
            :class:`ConvNorm`. ``None`` for ``nn.Conv2d``. Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='ReLU')``.
        deploy (bool): Build fused convs directly. Defaults to False.
    """

    def __init__(self, channels, expand_ratio=2, partial_div=4, dilation=1,
                 drop_path=0., conv_cfg=None, norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'), deploy=False):
        super().__init__()
        self.partial = max(channels // partial_div, 1)
        self.partial_conv = build_conv_layer(
            conv_cfg, self.partial, self.partial, 3, padding=dilation,
            dilation=dilation, bias=False)
        hidden = int(round(channels * expand_ratio))
        self.expand = ConvNorm(channels, hidden, 1, conv_cfg=conv_cfg,
                               norm_cfg=norm_cfg, act_cfg=act_cfg,
                               deploy=deploy)
        self.project = build_conv_layer(conv_cfg, hidden, channels, 1,
                                        bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else (
            nn.Identity())

    def forward(self, x):
        mixed, kept = torch.split(
            x, [self.partial, x.shape[1] - self.partial], dim=1)
        out = torch.cat([self.partial_conv(mixed), kept], dim=1)
        return x + self.drop_path(self.project(self.expand(out)))
