import torch.nn as nn
from mmcv.cnn.bricks import DropPath

from .conv_norm import ConvNorm


class SandglassBlock(nn.Module):
    """MobileNeXt's sandglass block (Zhou et al., ECCV 2020), one of the
    blocks the FalconNet paper drops into LightNet ("Designing the overall
    architecture").

    The inverted residual turned inside out: the shortcut joins the wide
    ends and the depthwise convs run on the wide tensor, 3x3 DW (+act) ->
    1x1 reduce (linear) -> 1x1 expand (+act) -> 3x3 DW (linear) -> + x.
    Every conv + norm is a :class:`ConvNorm`, so fusing folds all four.
    Not taken from MobileNeXt: its identity tensor multiplier (a partial
    shortcut).

    Args:
        channels (int): Input and output channels C.
        reduction_ratio (float): Bottleneck width = ``round(C /
            reduction_ratio)``. MobileNeXt uses 6; the default 4 mirrors the
            expansion ratio of LightNet's Meta Light Block, so both blocks
            are compared at one width ratio. Defaults to 4.
        dilation (int): Dilation of both depthwise convs. Defaults to 1.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        conv_cfg (dict | None): Config of the convs (see :class:`ConvNorm`);
            ``None`` for ``nn.Conv2d``. Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='ReLU6')`` (MobileNeXt's).
        deploy (bool): Build fused convs directly. Defaults to False.
    """

    def __init__(self, channels, reduction_ratio=4, dilation=1, drop_path=0.,
                 conv_cfg=None, norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU6'), deploy=False):
        super().__init__()
        hidden = int(round(channels / reduction_ratio))
        if hidden < 1:
            raise ValueError(
                f'reduction_ratio={reduction_ratio!r} leaves no bottleneck '
                f'channel for {channels} channels; expected a ratio of at '
                f'most {channels}.')
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy)
        self.dw_in = ConvNorm(channels, channels, 3, dilation=dilation,
                              groups=channels, act_cfg=act_cfg, **common)
        self.reduce = ConvNorm(channels, hidden, 1, **common)
        self.expand = ConvNorm(hidden, channels, 1, act_cfg=act_cfg,
                               **common)
        self.dw_out = ConvNorm(channels, channels, 3, dilation=dilation,
                               groups=channels, **common)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else (
            nn.Identity())

    def forward(self, x):
        out = self.expand(self.reduce(self.dw_in(x)))
        return x + self.drop_path(self.dw_out(out))
