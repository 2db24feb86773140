import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer

from ..fusion import FusableLayer, fold_conv_bn


class ConvNorm(FusableLayer):
    """Conv + norm (+ activation); fuses into a single conv with bias.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int | tuple): Kernel size.
        stride (int): Stride. Defaults to 1.
        padding (int | tuple | None): Padding; ``None`` keeps the size
            ("same" for odd kernels, dilation aware). Defaults to None.
        dilation (int): Dilation. Defaults to 1.
        groups (int): Groups. Defaults to 1.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict | None): Activation config, ``None`` for none.
            Defaults to None.
        deploy (bool): Build the fused form directly. Defaults to False.
    """
    _branch_names = ('conv', 'bn')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=None, dilation=1, groups=1,
                 norm_cfg=dict(type='BN'), act_cfg=None, deploy=False):
        super().__init__()
        kernel_size = nn.modules.utils._pair(kernel_size)
        if padding is None:
            padding = tuple(dilation * (k - 1) // 2 for k in kernel_size)
        self.conv_args = dict(
            in_channels=in_channels, out_channels=out_channels,
            kernel_size=kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups)
        if deploy:
            self.fused = self._make_fused()
        else:
            self.conv = nn.Conv2d(**self.conv_args, bias=False)
            self.bn = build_norm_layer(norm_cfg, out_channels)[1]
        self.act = build_activation_layer(act_cfg) if act_cfg else None

    def _make_fused(self):
        return nn.Conv2d(**self.conv_args, bias=True)

    def _fused_state(self):
        weight, bias = fold_conv_bn(self.conv.weight, None, self.bn)
        return dict(weight=weight, bias=bias)

    def forward(self, x):
        x = self.fused(x) if self.is_fused else self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x
