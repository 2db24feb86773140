import torch.nn as nn
from mmcv.cnn import (build_activation_layer, build_conv_layer,
                      build_norm_layer)

from ..fusion import FusableLayer, fold_conv_bn


def build_foldable_conv(conv_cfg, *args, **kwargs) -> nn.Conv2d:
    """``build_conv_layer(conv_cfg, *args, **kwargs)``, refused where fusion
    could not fold the result exactly.

    Fusing (and training with folded batch statistics) reads a conv's
    ``weight`` as the kernel of a zero-padded ``nn.Conv2d``. That is the
    conv's function only when it runs ``nn.Conv2d``'s own forward with
    ``padding_mode='zeros'``: ``nn.Conv2d`` or a subclass that changes, say,
    its initialization, not a conv that pads or transforms its weight
    itself (mmcv's ``Conv2dAdaptivePadding``, ``ConvWS``, deformable
    convs).

    Args:
        conv_cfg (dict | None): mmcv conv config; ``None`` builds
            ``nn.Conv2d``.
        *args: Positional arguments of the conv's constructor.
        **kwargs: Keyword arguments of the conv's constructor.

    Raises:
        ValueError: The built conv does not compute ``nn.Conv2d``'s
            zero-padded convolution of its weight.
    """
    conv = build_conv_layer(conv_cfg, *args, **kwargs)
    conv_type = type(conv)
    if not (isinstance(conv, nn.Conv2d)
            and conv_type.forward is nn.Conv2d.forward
            and conv_type._conv_forward is nn.Conv2d._conv_forward
            and conv.padding_mode == 'zeros'):
        raise ValueError(
            f'conv_cfg={conv_cfg!r} builds {conv_type.__name__} '
            f"(padding_mode={getattr(conv, 'padding_mode', None)!r}), which "
            'fusion cannot fold: it reads each conv weight as the kernel of '
            "a zero-padded nn.Conv2d. Expected a conv type that runs "
            "nn.Conv2d's own forward with padding_mode='zeros' (nn.Conv2d "
            'or a subclass that leaves forward alone).')
    return conv


class ConvNorm(FusableLayer):
    """Conv + norm (+ activation); fuses into a single conv with bias.

    mmcv's ``ConvModule`` computes the same, but its fused form (mmcv's
    ``fuse_conv_bn``) keeps the conv under ``conv`` and leaves an
    ``nn.Identity`` for the norm; as a :class:`FusableLayer` the fused conv
    is the child ``fused``, which tells fused and unfused checkpoints apart
    on load.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int | tuple): Kernel size.
        stride (int): Stride. Defaults to 1.
        padding (int | tuple | str | None): Padding; ``None`` keeps the size
            ("same" for odd kernels, dilation aware). Defaults to None.
        dilation (int): Dilation. Defaults to 1.
        groups (int): Groups. Defaults to 1.
        conv_cfg (dict | None): Config of the training conv, built by
            :func:`build_foldable_conv`; ``None`` for ``nn.Conv2d``. The
            fused conv is always a plain ``nn.Conv2d``. Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict | None): Activation config, ``None`` for none.
            Defaults to None.
        deploy (bool): Build the fused form directly. Defaults to False.
    """
    _branch_names = ('conv', 'bn')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=None, dilation=1, groups=1, conv_cfg=None,
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
            self.conv = build_foldable_conv(conv_cfg, **self.conv_args,
                                            bias=False)
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
