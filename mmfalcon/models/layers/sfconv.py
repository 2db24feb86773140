from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer

from ..fusion import FusableLayer, fold_conv_bn
from .batch_stats import (all_reduce_means, batch_fold_refusal,
                          batch_gram, batch_scale_shift, statistics_group,
                          statistics_precision)
from .conv_norm import build_foldable_conv

# How a fused SF-Conv pair runs in PyTorch (:class:`FactorizedPointwise`).
SFCONV_IMPLS = ('matmul', 'conv')


def check_sfconv_impl(impl):
    """Refuse an ``impl`` that is not one of :data:`SFCONV_IMPLS`."""
    if impl not in SFCONV_IMPLS:
        raise ValueError(f'SF-Conv impl={impl!r}: expected one of '
                         f'{SFCONV_IMPLS}.')


def sfconv_params(in_channels: int, out_channels: int, window: int,
                  reduction: int) -> int:
    """Weights of an SF-Conv pair: C_in*K/R + C_in*C_out/K (FalconNet
    paper, "Sparsely Factorized 1x1 Conv")."""
    return in_channels * window // reduction + (
        in_channels * out_channels // window)


def is_feasible_window(in_channels, out_channels, window, reduction) -> bool:
    """K divides C_in, R divides K and K/R divides C_out (the windows
    tile C_in and the second layer's groups split C_out)."""
    return (window > 0 and in_channels % window == 0
            and window % reduction == 0
            and out_channels % (window // reduction) == 0)


def best_window(in_channels: int, out_channels: int,
                reduction: int = 2) -> Optional[int]:
    """The feasible window with the fewest parameters (ties: smaller K).

    The unconstrained optimum is K = sqrt(R * C_out); returns None when no
    window is feasible.
    """
    feasible = [
        k for k in range(1, in_channels + 1)
        if is_feasible_window(in_channels, out_channels, k, reduction)
    ]
    if not feasible:
        return None
    return min(feasible, key=lambda k: (
        sfconv_params(in_channels, out_channels, k, reduction), k))


class FactorizedPointwise(nn.Module):
    """Fused SF-Conv pair: two sparse 1x1 layers with a channel shuffle.

    Computed as two batched matrix products over a reshaped tensor, which
    needs no separate shuffle copy for the first product; on these CPUs it
    beat grouped 1x1 convs + shuffle (see tools/analysis/benchmark.py).
    ``impl='conv'`` runs the grouped-conv form instead (the same function,
    the same weights), which other hardware may run faster.

    Args:
        in_channels (int): Input channels C_in.
        out_channels (int): Output channels C_out.
        window (int): Window K (a feasible one, see
            :func:`is_feasible_window`).
        reduction (int): Channel reduction R of the first layer.
        impl (str): ``'matmul'`` (two batched matrix products) or
            ``'conv'`` (grouped 1x1 convs and a channel shuffle).
            Defaults to 'matmul'.
    """

    def __init__(self, in_channels, out_channels, window, reduction,
                 impl='matmul'):
        super().__init__()
        check_sfconv_impl(impl)
        self.groups = in_channels // window  # G windows of K channels
        self.positions = window // reduction  # K/R hidden positions
        self.window = window
        self.out_channels = out_channels
        self.impl = impl
        hidden = in_channels // reduction
        # Stored in grouped-conv layout so both implementations share them.
        self.weight1 = nn.Parameter(torch.empty(hidden, window, 1, 1))
        self.bias1 = nn.Parameter(torch.zeros(hidden))
        self.weight2 = nn.Parameter(
            torch.empty(out_channels, self.groups, 1, 1))
        self.bias2 = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_normal_(self.weight1)
        nn.init.kaiming_normal_(self.weight2)

    def forward(self, x):
        n, _, h, w = x.shape
        g, p = self.groups, self.positions
        if self.impl == 'conv':
            x = F.conv2d(x, self.weight1, self.bias1, groups=g)
            x = x.reshape(n, g, p, h, w).transpose(1, 2).reshape(n, -1, h, w)
            return F.conv2d(x, self.weight2, self.bias2, groups=p)
        x = x.reshape(n, g, self.window, h * w)
        hid = torch.matmul(self.weight1.reshape(g, p, self.window), x)
        hid = hid + self.bias1.reshape(g, p, 1)
        # [n, G, K/R, HW] -> [n, K/R, G, HW]: gather one position of every
        # window, so each output sees all input channels.
        out = torch.matmul(
            self.weight2.reshape(p, self.out_channels // p, g),
            hid.transpose(1, 2))
        out = out + self.bias2.reshape(p, -1, 1)
        return out.reshape(n, self.out_channels, h, w)


class SFConv(FusableLayer):
    """Sparse factorized 1x1 conv with full receptive range (FalconNet
    paper, "Factorize the Channel Operator": receptive range, SF-Conv).

    A grouped 1x1 conv C_in -> C_in/R (G = C_in/K windows), a channel
    shuffle, and a grouped 1x1 conv C_in/R -> C_out (K/R groups), each
    followed by BN. Fuses into :class:`FactorizedPointwise` with biases.

    With BN or SyncBN, training runs each layer's M branches folded into one
    grouped product with the batch's statistics, computed from the mean and
    second moment of each group's input (under SyncBN summed over the
    processes by one all-reduce per layer): the same outputs, gradients and
    running statistics as the branches, without the M-fold outputs.

    Args:
        in_channels (int): Input channels C_in.
        out_channels (int): Output channels C_out.
        reduction (int): Channel reduction R of the first layer.
            Defaults to 2.
        window (int | None): Window K; ``None`` picks the feasible K with
            the fewest parameters. Defaults to None.
        num_branches (int): Parallel branches per layer (M, each with its
            own BN, summed); 1 for a plain SF-Conv. Defaults to 1.
        conv_cfg (dict | None): Config of the two grouped 1x1 convs, built
            by :func:`~.conv_norm.build_foldable_conv`; ``None`` for
            ``nn.Conv2d``. The fused form is a :class:`FactorizedPointwise`
            whatever the config. Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        deploy (bool): Build the fused form directly. Defaults to False.
        fold_batch_stats (bool): Train with the branches folded by batch
            statistics where that is exact (BN or SyncBN in training
            mode); False always runs the branches. Defaults to True.
        impl (str): How the fused form runs, one of :data:`SFCONV_IMPLS`
            (see :class:`FactorizedPointwise`). Defaults to 'matmul'.
    """
    _branch_names = ('conv1', 'bn1', 'conv2', 'bn2')

    def __init__(self, in_channels, out_channels, reduction=2, window=None,
                 num_branches=1, conv_cfg=None, norm_cfg=dict(type='BN'),
                 deploy=False, fold_batch_stats=True, impl='matmul'):
        super().__init__()
        check_sfconv_impl(impl)
        if window is None:
            window = best_window(in_channels, out_channels, reduction)
            if window is None:
                raise ValueError(
                    f'No feasible SF-Conv window for {in_channels} -> '
                    f'{out_channels} channels with reduction {reduction}: '
                    'K must divide C_in, R must divide K and K/R must '
                    'divide C_out.')
        elif not is_feasible_window(in_channels, out_channels, window,
                                    reduction):
            raise ValueError(
                f'window={window} is not feasible for {in_channels} -> '
                f'{out_channels} channels with reduction {reduction}: K '
                'must divide C_in, R must divide K and K/R must divide C_out.')
        if num_branches < 1:
            raise ValueError(f'num_branches must be >= 1, got {num_branches}')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.reduction, self.window = reduction, window
        self.num_branches = num_branches
        self.fold_batch_stats = fold_batch_stats
        self.impl = impl
        self.groups = in_channels // window
        self.positions = window // reduction
        if deploy:
            self.fused = self._make_fused()
            return
        hidden, m = in_channels // reduction, num_branches
        # M branches as one grouped conv with M outputs per group slot; a BN
        # over the M-fold channels equals M independent BNs.
        self.conv1 = build_foldable_conv(conv_cfg, in_channels, hidden * m, 1,
                                         groups=self.groups, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, hidden * m)[1]
        self.conv2 = build_foldable_conv(conv_cfg, hidden, out_channels * m,
                                         1, groups=self.positions,
                                         bias=False)
        self.bn2 = build_norm_layer(norm_cfg, out_channels * m)[1]

    def _make_fused(self):
        return FactorizedPointwise(self.in_channels, self.out_channels,
                                   self.window, self.reduction, self.impl)

    def _sum_branches(self, x, groups):
        """[n, groups*M*c, h, w] -> [n, groups*c, h, w] summing branches."""
        n, _, h, w = x.shape
        x = x.reshape(n, groups, self.num_branches, -1, h, w).sum(2)
        return x.reshape(n, -1, h, w)

    def _fold(self, conv, bn, groups):
        weight, bias = fold_conv_bn(conv.weight, None, bn)
        m = self.num_branches
        weight = weight.reshape(groups, m, -1, *weight.shape[1:]).sum(1)
        bias = bias.reshape(groups, m, -1).sum(1)
        return weight.flatten(0, 1), bias.flatten()

    def _fused_state(self):
        w1, b1 = self._fold(self.conv1, self.bn1, self.groups)
        w2, b2 = self._fold(self.conv2, self.bn2, self.positions)
        return dict(weight1=w1, bias1=b1, weight2=w2, bias2=b2)

    def _fold_batch(self, x, conv, bn):
        """One grouped 1x1 layer's M branches folded with the batch
        statistics of their outputs, from the moments of ``x``
        ``[n, groups, k, positions]``: weight ``[groups, out, k]`` and bias
        ``[groups, out, 1]``."""
        n, groups, k, positions = x.shape
        x, full_precision = statistics_precision(x)
        with full_precision:
            # [groups, M * out, k]
            weight = conv.weight.reshape(groups, -1, k)
            mean_in = x.mean((0, 3))
            group = statistics_group(bn)
            # Moments about a detached centre c, exact for any constant c:
            # cov = E[(x - c)(x - c)'] - (mean - c)(mean - c)'. This
            # process's mean keeps float32 from cancelling; the processes
            # of a group must share c, so there it is zero.
            if group is None:
                centre = mean_in.detach()
                x = x - centre[..., None]
            else:
                centre = torch.zeros_like(mean_in)
            (offset, second), count = all_reduce_means(
                (mean_in - centre,
                 batch_gram(x) / positions),
                n * positions, group)
            cov_in = second - offset[..., :, None] * offset[..., None, :]
            mean_in = centre + offset
            var = torch.einsum('gok,gkj,goj->go', weight, cov_in,
                               weight).clamp(min=0).flatten()
            mean = torch.einsum('gok,gk->go', weight, mean_in).flatten()
            scale, shift = batch_scale_shift(bn, mean, var, count)
            m = self.num_branches
            weight = (weight * scale.reshape(groups, -1, 1)).reshape(
                groups, m, -1, k).sum(1)
            return weight, shift.reshape(groups, m, -1, 1).sum(1)

    def fold_refusal(self):
        """Why the training forward runs the branches one by one now, as
        ``(reason, detail)`` (see
        :func:`~.batch_stats.batch_fold_refusal`); None when it folds."""
        return batch_fold_refusal((self.bn1, self.bn2),
                                  self.fold_batch_stats)

    def _forward_folded(self, x):
        n, _, h, w = x.shape
        x = x.reshape(n, self.groups, self.window, h * w)
        weight, bias = self._fold_batch(x, self.conv1, self.bn1)
        # [n, G, K/R, HW]; the bias in the product's precision (autocast)
        hid = torch.matmul(weight, x)
        hid = hid + bias.to(hid.dtype)
        # channel shuffle: [n, K/R, G, HW], one position of every window
        hid = hid.transpose(1, 2).contiguous()
        weight, bias = self._fold_batch(hid, self.conv2, self.bn2)
        out = torch.matmul(weight, hid)
        out = out + bias.to(out.dtype)
        return out.reshape(n, self.out_channels, h, w)

    def forward(self, x):
        if self.is_fused:
            return self.fused(x)
        if self.fold_refusal() is None:
            return self._forward_folded(x)
        hid = self._sum_branches(self.bn1(self.conv1(x)), self.groups)
        n, _, h, w = hid.shape
        hid = hid.reshape(n, self.groups, self.positions, h, w).transpose(
            1, 2).reshape(n, -1, h, w)
        return self._sum_branches(self.bn2(self.conv2(hid)), self.positions)


class RefCO(SFConv):
    """Re-parameterizable factorized channel operator (FalconNet paper,
    "Factorize the Channel Operator": RefCO).

    M parallel first SF-Convs (own BN each) summed, then M parallel second
    SF-Convs summed; all share one sparsity pattern, so each layer folds
    into one grouped conv with bias (never into a dense 1x1 conv).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        reduction (int): Channel reduction R. Defaults to 2.
        window (int | None): Window K, ``None`` for the best feasible one.
            Defaults to None.
        num_branches (int): Parallel branches M. Defaults to 3.
        conv_cfg (dict | None): See :class:`SFConv`. Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        deploy (bool): Build the fused form directly. Defaults to False.
        fold_batch_stats (bool): See :class:`SFConv`. Defaults to True.
        impl (str): See :class:`SFConv`. Defaults to 'matmul'.
    """

    def __init__(self, in_channels, out_channels, reduction=2, window=None,
                 num_branches=3, conv_cfg=None, norm_cfg=dict(type='BN'),
                 deploy=False, fold_batch_stats=True, impl='matmul'):
        super().__init__(in_channels, out_channels, reduction=reduction,
                         window=window, num_branches=num_branches,
                         conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy,
                         fold_batch_stats=fold_batch_stats, impl=impl)
