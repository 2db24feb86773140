import torch.nn as nn
from mmcv.cnn import build_norm_layer

from ..fusion import (FusableLayer, bn_scale_shift, fold_conv_bn,
                      identity_kernel, pad_kernel)


class RepSO(FusableLayer):
    """Re-parameterizable spatial operator (FalconNet paper, "Strengthen
    the Spatial Operator").

    Training: N parallel 3x3 depthwise convs, a 1x3, a 3x1 and a 1x1
    depthwise conv and (stride 1 only) an identity branch, each with its own
    BN, summed. Deploy: a single 3x3 depthwise conv with bias.

    Args:
        channels (int): Input and output channels.
        stride (int): Stride. Defaults to 1.
        dilation (int): Dilation, applied consistently to every branch so
            the fusion stays exact. Defaults to 1.
        num_3x3 (int): Number N of parallel 3x3 branches. Defaults to 3.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        deploy (bool): Build the fused conv directly. Defaults to False.
    """
    _branch_names = ('conv3x3', 'bn3x3', 'conv1x3', 'bn1x3', 'conv3x1',
                     'bn3x1', 'conv1x1', 'bn1x1', 'identity')

    def __init__(self, channels, stride=1, dilation=1, num_3x3=3,
                 norm_cfg=dict(type='BN'), deploy=False):
        super().__init__()
        if num_3x3 < 1:
            raise ValueError(f'num_3x3 must be >= 1, got {num_3x3}')
        self.channels, self.stride, self.dilation = channels, stride, dilation
        self.num_3x3 = num_3x3
        if deploy:
            self.fused = self._make_fused()
            return
        d = dilation

        def dw_conv(out_mult, kernel, padding):
            return nn.Conv2d(channels, channels * out_mult, kernel, stride,
                             padding, dilation=d, groups=channels, bias=False)

        def norm(num):
            return build_norm_layer(norm_cfg, num)[1]

        # The N 3x3 branches run as one conv with N outputs per channel; a
        # BN over the N*C channels is exactly N independent BNs.
        self.conv3x3, self.bn3x3 = dw_conv(num_3x3, 3, d), norm(
            channels * num_3x3)
        self.conv1x3, self.bn1x3 = dw_conv(1, (1, 3), (0, d)), norm(channels)
        self.conv3x1, self.bn3x1 = dw_conv(1, (3, 1), (d, 0)), norm(channels)
        self.conv1x1, self.bn1x1 = dw_conv(1, 1, 0), norm(channels)
        self.identity = norm(channels) if stride == 1 else None

    def _make_fused(self):
        return nn.Conv2d(self.channels, self.channels, 3, self.stride,
                         self.dilation, dilation=self.dilation,
                         groups=self.channels, bias=True)

    def _fused_state(self):
        c = self.channels
        w3, b3 = fold_conv_bn(self.conv3x3.weight, None, self.bn3x3)
        weight = w3.reshape(c, self.num_3x3, 1, 3, 3).sum(1)
        bias = b3.reshape(c, self.num_3x3).sum(1)
        for conv, bn in ((self.conv1x3, self.bn1x3),
                         (self.conv3x1, self.bn3x1),
                         (self.conv1x1, self.bn1x1)):
            w, b = fold_conv_bn(conv.weight, None, bn)
            weight = weight + pad_kernel(w, (3, 3))
            bias = bias + b
        if self.identity is not None:
            scale, shift = bn_scale_shift(self.identity)
            kernel = identity_kernel(c, 1, (3, 3), like=weight)
            weight = weight + kernel * scale.reshape(-1, 1, 1, 1)
            bias = bias + shift
        return dict(weight=weight, bias=bias)

    def forward(self, x):
        if self.is_fused:
            return self.fused(x)
        out = self.bn3x3(self.conv3x3(x))
        n, _, h, w = out.shape
        out = out.reshape(n, self.channels, self.num_3x3, h, w).sum(2)
        out = out + self.bn1x3(self.conv1x3(x)) + self.bn3x1(
            self.conv3x1(x)) + self.bn1x1(self.conv1x1(x))
        if self.identity is not None:
            out = out + self.identity(x)
        return out
