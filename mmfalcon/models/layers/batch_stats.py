"""Batch statistics of linear branches from the moments of their input,
so a re-parameterizable layer can train as a single conv.

In training mode a layer that sums ``BN_b(conv_b(x))`` over branches b
normalizes each branch with its own batch mean and variance. For a linear
branch these are exact functions of the input's moments: a 3x3 depthwise
branch with taps w has mean ``w . mu`` and variance ``w' M w - (w . mu)^2``,
``mu`` and ``M`` being the mean and second moment of the 3x3 patches of x
(for a grouped 1x1 conv, of each group's input channels). With them the
branches fold, batch by batch, into one conv that gives the sum the branches
would give, and autograd through the moments gives the gradients the
branches would get: the same function without the branches' outputs.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Tap t = (row, col) of a 3x3 patch reads x at offset (t - 1) * dilation.
# The product of taps s and t is a lag t - s in {-2..2}^2, index 0..24 of a
# 5x5 kernel.
_TAPS = [(row, col) for row in range(3) for col in range(3)]
_LAG = torch.tensor([[(t[0] - s[0] + 2) * 5 + t[1] - s[1] + 2
                      for t in _TAPS] for s in _TAPS])

# Region kinds along one axis: 0 the whole axis, 1 its first d positions,
# 2 its last d positions. A tap with offset +d (index 2) has no input for
# the first d output positions, a tap with offset -d (index 0) for the last.
_STRIP_OF_TAP = {0: 2, 1: None, 2: 1}


def _region_signs() -> torch.Tensor:
    """``signs[tap, row kind, col kind]``: summing over the positions where a
    tap reads inside the grid is the sum over the whole grid, minus the row
    strip the tap reads outside of, minus its column strip, plus their
    corner (inclusion-exclusion)."""
    signs = torch.zeros(9, 3, 3)
    for i, (row, col) in enumerate(_TAPS):
        row_signs = [1.] + [-float(k == _STRIP_OF_TAP[row]) for k in (1, 2)]
        col_signs = [1.] + [-float(k == _STRIP_OF_TAP[col]) for k in (1, 2)]
        for rk in range(3):
            for ck in range(3):
                signs[i, rk, ck] = row_signs[rk] * col_signs[ck]
    return signs.reshape(9, 9)


_SIGNS = _region_signs()


def _ranges(size: int, dilation: int):
    """Index ranges of the three region kinds along an axis of ``size``."""
    strip = min(dilation, size)
    return (0, size), (0, strip), (size - strip, size)


def _regions(height: int, width: int, dilation: int):
    """The nine (rows, cols) regions in the order of ``_SIGNS``' columns."""
    return [(rows, cols) for rows in _ranges(height, dilation)
            for cols in _ranges(width, dilation)]


def _lag_kernels(products: torch.Tensor) -> torch.Tensor:
    """[..., 9, 9] tap products -> [..., 25] sums per lag."""
    flat = products.flatten(-2)
    lags = flat.new_zeros(*flat.shape[:-1], 25)
    return lags.index_add_(-1, _LAG.flatten().to(flat.device), flat)


def _region_sums(planes: torch.Tensor, dilation: int) -> torch.Tensor:
    """Sums ``[9 regions, ...]`` of maps ``[..., H, W]`` over the nine
    regions of the grid, from one row sum and one column sum."""
    height, width = planes.shape[-2:]
    row_sums, col_sums = planes.sum(-1), planes.sum(-2)
    sums = []
    for rk, (r0, r1) in enumerate(_ranges(height, dilation)):
        for ck, (c0, c1) in enumerate(_ranges(width, dilation)):
            if rk == 0:
                sums.append(col_sums[..., c0:c1].sum(-1))
            elif ck == 0:
                sums.append(row_sums[..., r0:r1].sum(-1))
            else:
                sums.append(planes[..., r0:r1, c0:c1].sum((-2, -1)))
    return torch.stack(sums)


def _lagged_products(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """``[9 regions, C, 25 lags]``: the sums over each region of positions q
    of ``x(q) * x(q + lag)`` (zero outside the grid). The product map of a
    lag, shifted, is its opposite's, so 13 products make all 25."""
    _, c, h, w = x.shape
    # batch summed first: the regions need no batch axis
    planes = x.new_zeros(25, c, h, w)
    for lag_r in range(3):
        for lag_c in range(-2, 3):
            if lag_r == 0 and lag_c < 0:
                continue  # the opposite of a lag already taken
            dr, dc = lag_r * dilation, lag_c * dilation
            if dr >= h or abs(dc) >= w:
                continue  # no position pairs: the sums stay zero
            c0, c1 = max(0, -dc), w - max(0, dc)  # q and q + lag inside
            product = (x[:, :, :h - dr, c0:c1] *
                       x[:, :, dr:, c0 + dc:c1 + dc]).sum(0)
            planes[(lag_r + 2) * 5 + lag_c + 2, :, :h - dr, c0:c1] = product
            planes[(2 - lag_r) * 5 + 2 - lag_c, :, dr:,
                   c0 + dc:c1 + dc] = product
    return _region_sums(planes, dilation).transpose(1, 2)


class _PatchMoments(torch.autograd.Function):
    """Mean [C, 9] and second moment [C, 9, 9] of the 3x3 zero-padded
    (stride 1, 'same') patches of x over batch and positions.

    Neither pass unfolds the patches: the forward takes the 13 distinct
    lagged products of x with itself and corrects the border strips; the
    backward is one 5x5 depthwise conv, corrected on the strips likewise.
    """

    @staticmethod
    def forward(ctx, x, dilation):
        n, c, h, w = x.shape
        signs = _SIGNS.to(x)
        count = n * h * w
        sums = _region_sums(x.sum(0), dilation)
        mean = torch.einsum('tr,rc->ct', signs, sums) / count
        lags = _lagged_products(x, dilation)[:, :, _LAG.to(x.device)]
        second = torch.einsum('sr,rcst->cst', signs, lags) / count
        ctx.save_for_backward(x)
        ctx.dilation = dilation
        return mean, second

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_mean, grad_second):
        (x, ) = ctx.saved_tensors
        n, c, h, w = x.shape
        d = ctx.dilation
        padded = F.pad(x, [2 * d] * 4)
        signs = _SIGNS.to(x)
        # d second[s, t] / dx(q) = x(q - off(s) + off(t)) where tap s is
        # valid, plus the same with s and t swapped.
        sym = grad_second + grad_second.transpose(1, 2)
        kernels = _lag_kernels(torch.einsum('sr,cst->rcst', signs, sym))
        constants = torch.einsum('tr,ct->rc', signs, grad_mean)
        grad = None
        for region, ((r0, r1), (c0, c1)) in enumerate(_regions(h, w, d)):
            window = padded[:, :, r0:r1 + 4 * d, c0:c1 + 4 * d]
            part = F.conv2d(window, kernels[region].reshape(c, 1, 5, 5),
                            constants[region], dilation=d, groups=c)
            if grad is None:  # region 0 is the whole grid
                grad = part
            else:
                grad[:, :, r0:r1, c0:c1] += part
        return grad / (n * h * w), None


def patch_moments(x: torch.Tensor, dilation: int = 1
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[C, 9]`` and second moment ``[C, 9, 9]`` over batch and
    positions of the 3x3 patches a stride-1 'same' depthwise conv with this
    dilation reads (zero padding included), differentiable in ``x``."""
    return _PatchMoments.apply(x, dilation)


def statistics_precision(x: torch.Tensor):
    """``(x, context)``: x in at least float32 and a context with autocast
    off, to compute statistics in, as BN computes its own under mixed
    precision (moments in bfloat16 would lose the variance)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return x.to(dtype), torch.autocast(x.device.type, enabled=False)


def batch_scale_shift(bn: nn.modules.batchnorm._BatchNorm,
                      mean: torch.Tensor, var: torch.Tensor,
                      count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(scale, shift)`` a training-mode ``bn`` applies to
    values with batch ``mean`` and biased ``var`` over ``count`` values;
    updates its running statistics as its own forward would."""
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum
            if momentum is None:  # cumulative moving average
                momentum = 1. / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.detach(), momentum)
            bn.running_var.lerp_(var.detach() * (count / (count - 1)),
                                 momentum)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def folds_batch_stats(bn: nn.Module) -> bool:
    """True for a plain BatchNorm2d that normalizes with batch statistics
    now: its training forward can be folded from input moments. (A
    SyncBatchNorm's statistics span processes, so it is left alone.)"""
    return type(bn) is nn.BatchNorm2d and (bn.training
                                           or not bn.track_running_stats)
