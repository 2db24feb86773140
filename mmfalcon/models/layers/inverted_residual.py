import torch.nn as nn

from .conv_norm import ConvNorm


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand -> 3x3 DW -> 1x1 project.

    Shared by FalconNet (as an alternative LightNet block) and ParC-Net (its
    MV2 layers). Each conv+norm is a :class:`ConvNorm`, so the fusion walker
    folds them.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        stride (int): Stride of the depthwise conv. Defaults to 1.
        expand_ratio (float): Hidden width = ``round(in_channels *
            expand_ratio)``; 1 drops the expansion conv. Defaults to 4.
        dilation (int): Dilation of the depthwise conv. Defaults to 1.
        conv_cfg (dict | None): Config of the convs (see :class:`ConvNorm`);
            ``None`` for ``nn.Conv2d``. Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='ReLU6')``.
        deploy (bool): Build fused convs directly. Defaults to False.
    """

    def __init__(self, in_channels, out_channels, stride=1, expand_ratio=4,
                 dilation=1, conv_cfg=None, norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU6'), deploy=False):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy)
        self.expand = ConvNorm(in_channels, hidden, 1, act_cfg=act_cfg,
                               **common) if expand_ratio != 1 else None
        self.depthwise = ConvNorm(hidden, hidden, 3, stride=stride,
                                  dilation=dilation, groups=hidden,
                                  act_cfg=act_cfg, **common)
        self.project = ConvNorm(hidden, out_channels, 1, **common)

    def forward(self, x):
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return x + out if self.use_residual else out
