import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer

from ..fusion import (FusableLayer, bn_scale_shift, fold_conv_bn,
                      identity_kernel, pad_kernel)
from .batch_stats import (all_reduce_means, batch_fold_refusal,
                          batch_scale_shift, patch_moments,
                          statistics_group, statistics_precision)
from .conv_norm import build_foldable_conv


class RepSO(FusableLayer):
    """Re-parameterizable spatial operator (FalconNet paper, "Strengthen
    the Spatial Operator").

    Training: N parallel 3x3 depthwise convs, a 1x3, a 3x1 and a 1x1
    depthwise conv and (stride 1 only) an identity branch, each with its own
    BN, summed. Deploy: a single 3x3 depthwise conv with bias.

    With stride 1 and BN or SyncBN, training runs the branches folded into
    one 3x3 conv with the batch's statistics, computed from the moments of
    the input patches (:mod:`.batch_stats`; under SyncBN summed over the
    processes by one all-reduce): the same outputs, gradients and running
    statistics as the branches, at a fraction of the cost.

    Args:
        channels (int): Input and output channels.
        stride (int): Stride. Defaults to 1.
        dilation (int): Dilation, applied consistently to every branch so
            the fusion stays exact. Defaults to 1.
        num_3x3 (int): Number N of parallel 3x3 branches. Defaults to 3.
        conv_cfg (dict | None): Config of the branch convs, built by
            :func:`~.conv_norm.build_foldable_conv`; ``None`` for
            ``nn.Conv2d``. The fused conv is always a plain ``nn.Conv2d``.
            Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        deploy (bool): Build the fused conv directly. Defaults to False.
        fold_batch_stats (bool): Train with the branches folded by batch
            statistics where that is exact (stride 1, BN or SyncBN in
            training mode); False always runs the branches one by one.
            Defaults to True.
    """
    _branch_names = ('conv3x3', 'bn3x3', 'conv1x3', 'bn1x3', 'conv3x1',
                     'bn3x1', 'conv1x1', 'bn1x1', 'identity')

    def __init__(self, channels, stride=1, dilation=1, num_3x3=3,
                 conv_cfg=None, norm_cfg=dict(type='BN'), deploy=False,
                 fold_batch_stats=True):
        super().__init__()
        if num_3x3 < 1:
            raise ValueError(f'num_3x3 must be >= 1, got {num_3x3}')
        self.channels, self.stride, self.dilation = channels, stride, dilation
        self.num_3x3 = num_3x3
        self.fold_batch_stats = fold_batch_stats
        if deploy:
            self.fused = self._make_fused()
            return
        d = dilation

        def dw_conv(out_mult, kernel, padding):
            return build_foldable_conv(
                conv_cfg, channels, channels * out_mult, kernel, stride,
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

    def _branch_taps(self):
        """Each branch's kernel on the 3x3 tap grid, ``[C, branches, 9]``,
        and its BN with the branches it normalizes, in the same order."""
        c = self.channels
        taps = [self.conv3x3.weight.reshape(c, self.num_3x3, 9)]
        norms = [(self.bn3x3, self.num_3x3)]
        for conv, bn in ((self.conv1x3, self.bn1x3),
                         (self.conv3x1, self.bn3x1),
                         (self.conv1x1, self.bn1x1)):
            taps.append(pad_kernel(conv.weight, (3, 3)).reshape(c, 1, 9))
            norms.append((bn, 1))
        if self.identity is not None:
            taps.append(identity_kernel(c, 1, (3, 3), like=taps[0]).reshape(
                c, 1, 9))
            norms.append((self.identity, 1))
        return torch.cat(taps, 1), norms

    def fold_refusal(self):
        """Why the training forward runs the branches one by one now, as
        ``(reason, detail)`` (see
        :func:`~.batch_stats.batch_fold_refusal`); None when it folds."""
        norms = [bn for bn in (self.bn3x3, self.bn1x3, self.bn3x1,
                               self.bn1x1, self.identity) if bn is not None]
        return batch_fold_refusal(norms, self.fold_batch_stats, self.stride)

    def _fold_batch(self, x):
        """The branches folded into one 3x3 kernel ``[C, 9]`` and bias with
        the batch statistics each branch's BN computes (and updates)."""
        taps, norms = self._branch_taps()
        (mean_patch, second_patch), count = all_reduce_means(
            patch_moments(x, self.dilation),
            x.shape[0] * x.shape[2] * x.shape[3],
            statistics_group(self.bn3x3))
        mean = torch.einsum('cbt,ct->cb', taps, mean_patch)
        var = (torch.einsum('cbs,cst,cbt->cb', taps, second_patch, taps) -
               mean.square()).clamp(min=0)
        scales, shifts, start = [], [], 0
        for bn, num in norms:
            stop = start + num
            branch_mean = mean[:, start:stop].reshape(-1)
            branch_var = var[:, start:stop].reshape(-1)
            scale, shift = batch_scale_shift(bn, branch_mean, branch_var,
                                             count)
            scales.append(scale.reshape(-1, num))
            shifts.append(shift.reshape(-1, num))
            start = stop
        weight = torch.einsum('cb,cbt->ct', torch.cat(scales, 1), taps)
        bias = torch.cat(shifts, 1).sum(1)
        return weight, bias

    def _forward_folded(self, x):
        """All branches as one conv, normalized with the batch statistics
        each branch's BN would compute (and update)."""
        stats_input, full_precision = statistics_precision(x)
        with full_precision:
            weight, bias = self._fold_batch(stats_input)
        return F.conv2d(x, weight.reshape(self.channels, 1, 3, 3), bias,
                        padding=self.dilation, dilation=self.dilation,
                        groups=self.channels)

    def forward(self, x):
        if self.is_fused:
            return self.fused(x)
        if self.fold_refusal() is None:
            return self._forward_folded(x)
        out = self.bn3x3(self.conv3x3(x))
        n, _, h, w = out.shape
        out = out.reshape(n, self.channels, self.num_3x3, h, w).sum(2)
        out = out + self.bn1x3(self.conv1x3(x)) + self.bn3x1(
            self.conv3x1(x)) + self.bn1x1(self.conv1x1(x))
        if self.identity is not None:
            out = out + self.identity(x)
        return out
