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

Under SyncBN the statistics are those of the whole batch across processes:
each layer adds up its input's moments over the processes with ONE
all-reduce of their sums and count (:func:`all_reduce_means`) and folds with
the totals. Its gradient is the all-reduce of the moments' gradients, which
is what SyncBN's backward all-reduces (:class:`_AllReduceSum`).
:class:`CPUSyncBatchNorm` is a SyncBN that all-reduces likewise, and so
trains on CPU processes, where torch's own refuses to.
"""
from collections import Counter
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from mmengine.utils.dl_utils.parrots_wrapper import \
    SyncBatchNorm as MMEngineSyncBatchNorm
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from mmfalcon.registry import MODELS

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


# Bytes of input per pass of :func:`_lagged_products` on the CPU: a chunk
# of channels this large, its products and lag planes stay in a core's L2
# cache through the 13 products (1.6x faster moments at 80x80, batch 8).
_CPU_CHUNK_BYTES = 1 << 20


def _lagged_products(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """``[9 regions, C, 25 lags]``: the sums over each region of positions q
    of ``x(q) * x(q + lag)`` (zero outside the grid). The product map of a
    lag, shifted, is its opposite's, so 13 products make all 25. Channels
    are independent: on the CPU they go through in cache-sized chunks."""
    n, c, h, w = x.shape
    chunk = max(1, _CPU_CHUNK_BYTES // (n * h * w * x.element_size()))
    if x.device.type == 'cpu' and c > chunk:
        return torch.cat([_lagged_products(x[:, i:i + chunk], dilation)
                          for i in range(0, c, chunk)], 1)
    # batch summed first: the regions need no batch axis. Under
    # torch.compile each lag's plane is its product zero-padded into place:
    # traced, a write into a slice of one buffer copies the whole buffer.
    compiling = torch.compiler.is_compiling()
    planes = [x.new_zeros(c, h, w)] * 25 if compiling else x.new_zeros(
        25, c, h, w)
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
            # the lag's plane holds it at q, its opposite's at q + lag
            for index, top, left in (((lag_r + 2) * 5 + lag_c + 2, 0, c0),
                                     ((2 - lag_r) * 5 + 2 - lag_c, dr,
                                      c0 + dc)):
                if compiling:
                    planes[index] = F.pad(
                        product, [left, w - left - (c1 - c0), top, dr - top])
                else:
                    planes[index, :, top:top + h - dr,
                           left:left + c1 - c0] = product
    if compiling:
        planes = torch.stack(planes)
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
            elif torch.compiler.is_compiling():
                # a slice update would copy all of grad (see above)
                grad = grad + F.pad(part, [c0, w - c1, r0, h - r1])
            else:
                grad[:, :, r0:r1, c0:c1] += part
        return grad / (n * h * w), None


class _BatchGram(torch.autograd.Function):
    """``x @ x^T`` averaged over dim 0 of x ``[n, ..., K, P]``. Autograd
    would take the gradient as two products (one per factor) and their
    sum; the product is symmetric, so one does: ``(g + g^T) @ x / n``."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.matmul(x, x.transpose(-1, -2)).mean(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x, ) = ctx.saved_tensors
        return torch.matmul((grad + grad.transpose(-1, -2)) / x.shape[0], x)


def batch_gram(x: torch.Tensor) -> torch.Tensor:
    """``[..., K, K]``: the mean over dim 0 of x ``[n, ..., K, P]`` of
    ``x @ x^T``, differentiable in x (see :class:`_BatchGram`)."""
    return _BatchGram.apply(x)


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


def batch_scale_shift(bn: _BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                      count: Union[int, torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(scale, shift)`` a training-mode ``bn`` applies to
    values with batch ``mean`` and biased ``var`` over ``count`` values (an
    int, or a tensor when it is a total over processes); updates its
    running statistics as its own forward would."""
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


class _AllReduceSum(torch.autograd.Function):
    """The sum of a tensor over the processes of a group, differentiable.

    Every process's loss depends on every process's input through that sum,
    so the gradient of the total loss in each input is the sum over the
    processes of the gradients in the output: the backward is the same
    all-reduce, of the output gradients. SyncBN's backward all-reduces
    exactly those (its ``sum_dy``, ``sum_dy_xmu``: the gradients in the
    batch mean and variance). torch's ``torch.distributed.nn.functional.
    all_reduce`` computes the same, but torch 2.13 deprecates it.
    """

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grad = grad_total.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def statistics_group(bn: nn.Module):
    """The process group whose whole batch a SyncBN (torch's or
    :class:`CPUSyncBatchNorm`) normalizes with, or None where it takes this
    process's statistics: not a SyncBN, not training, distributed not
    initialized, or a group of one process (as torch's SyncBatchNorm
    decides; its ``process_group``, else the world)."""
    if not (isinstance(bn, SYNC_NORMS) and bn.training
            and dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def all_reduce_means(means: Sequence[torch.Tensor], count: int, group
                     ) -> Tuple[List[torch.Tensor],
                                Union[int, torch.Tensor]]:
    """Means over ``count`` values of this process -> the means over the
    values of all processes of ``group`` and their total count (a tensor),
    from ONE all-reduce of the sums and the count, differentiable
    (:class:`_AllReduceSum`). ``group`` None: the means and count as given.

    Args:
        means (Sequence[Tensor]): Means of the same dtype and device.
        count (int): The number of values each mean is taken over here.
        group: A process group (see :func:`statistics_group`) or None.
    """
    if group is None:
        return list(means), count
    sums = [mean.reshape(-1) * count for mean in means]
    totals = _AllReduceSum.apply(
        torch.cat(sums + [sums[0].new_full((1, ), count)]), group)
    total_count = totals[-1].detach()
    return [total.reshape(mean.shape) / total_count for total, mean in zip(
        totals[:-1].split([s.numel() for s in sums]), means)], total_count


class CPUSyncBatchNorm(_BatchNorm):
    """A SyncBN that also trains on CPU processes (gloo): torch's
    SyncBatchNorm raises "expected input tensor to be on GPU" there as soon
    as distributed is initialized, and DDP refuses CPU modules holding one,
    so this is a batch norm of its own, not a SyncBatchNorm subclass.

    In training mode, across a group of processes, it normalizes with the
    mean and variance of the whole batch, from one all-reduce of the sums,
    the sums of squares and the count (:func:`all_reduce_means`,
    differentiable), and updates the running statistics with the total
    count, as SyncBN does. Otherwise (eval mode, distributed not
    initialized, a group of one process) it is a plain batch norm. RepSO
    and SF-Conv fold it as they fold SyncBN.

    The variance is taken as ``E[x^2] - E[x]^2``: exact in float64; in
    float32 it loses digits only where a channel's mean is large against
    its deviation. It runs on any device, but on GPUs torch's SyncBatchNorm
    is the one to use: ``tools/train.py`` makes SyncBN this class only
    without CUDA. Registered in mmfalcon's scope only
    (``type='mmfalcon.CPUSyncBN'``).

    Args:
        num_features (int): Channels C of an ``[N, C, ...]`` input.
        eps (float): Added to the variance. Defaults to 1e-5.
        momentum (float | None): Of the running statistics; None for their
            cumulative average. Defaults to 0.1.
        affine (bool): Learn a scale and a shift. Defaults to True.
        track_running_stats (bool): Keep running statistics. Defaults to
            True.
        process_group: The processes whose batch it normalizes with; None
            for all. Defaults to None.
        device: Of the parameters and buffers. Defaults to None.
        dtype: Of the parameters and buffers. Defaults to None.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None,
                 dtype=None):
        super().__init__(num_features, eps, momentum, affine,
                         track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'{type(self).__name__} expects an [N, C, ...] '
                             f'input, got {input.dim()}D')

    def forward(self, input):
        group = statistics_group(self)
        if group is None:
            return super().forward(input)
        self._check_input_dim(input)
        values, full_precision = statistics_precision(input)
        dims = [0, *range(2, input.dim())]
        with full_precision:
            (mean, second), count = all_reduce_means(
                (values.mean(dims), values.square().mean(dims)),
                input.numel() // input.shape[1], group)
            var = (second - mean.square()).clamp(min=0)
            scale, shift = batch_scale_shift(self, mean, var, count)
            shape = (-1, ) + (1, ) * (input.dim() - 2)
            out = values * scale.reshape(shape) + shift.reshape(shape)
        return out.to(input.dtype)


MODELS.register_module('CPUSyncBN', module=CPUSyncBatchNorm)
# The norms that take their statistics across processes.
SYNC_NORMS = (nn.SyncBatchNorm, CPUSyncBatchNorm)

# The norms whose training forward the layers fold: BN, SyncBN (across
# processes; mmcv's 'SyncBN' is mmengine's subclass, torch's forward).
# Other subclasses may compute something else, so they run.
FOLDED_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, MMEngineSyncBatchNorm,
                CPUSyncBatchNorm)

# What the log says of the layers that train branch by branch, by reason.
FOLD_REFUSALS = {
    'disabled': 'with fold_batch_stats=False',
    'stride': 'with stride {} (the fold needs stride 1)',
    'eval': 'with eval-mode BN (norm_eval, frozen stages)',
    'norm': 'with {} (the fold takes BatchNorm2d and SyncBatchNorm)',
}


def batch_fold_refusal(norms: Sequence[nn.Module], enabled: bool = True,
                       stride: int = 1) -> Optional[Tuple[str, str]]:
    """Why a layer whose linear branches are normalized by ``norms`` cannot
    train folded by batch statistics, as ``(reason, detail)``: a key of
    :data:`FOLD_REFUSALS` and what its text names; None where it can.

    Args:
        norms (Sequence[nn.Module]): The norm layers of the branches.
        enabled (bool): The layer's ``fold_batch_stats``. Defaults to True.
        stride (int): The layer's stride. Defaults to 1.
    """
    if not enabled:
        return 'disabled', ''
    if stride != 1:
        return 'stride', str(stride)
    kinds = {type(bn) for bn in norms}
    if len(kinds) > 1 or not kinds <= set(FOLDED_NORMS):
        return 'norm', ' and '.join(sorted(kind.__name__ for kind in kinds))
    if len({id(getattr(bn, 'process_group', None)) for bn in norms}) > 1:
        return 'norm', 'SyncBNs of different process groups'
    if not all(bn.training or not bn.track_running_stats for bn in norms):
        return 'eval', ''
    return None


def describe_folding(module: nn.Module, owner: str) -> Optional[str]:
    """One line on how the unfused re-parameterizable layers under
    ``module`` (those with a ``fold_refusal()``) train now: how many fold
    by batch statistics, with which processes' statistics under SyncBN, and
    how many run branch by branch, for which reasons. None where there is
    no such layer.

    Args:
        module (nn.Module): The model, e.g. a FalconNet.
        owner (str): Its name in the line, e.g. ``'FalconNet'``.
    """
    layers = [m for m in module.modules()
              if callable(getattr(m, 'fold_refusal', None))
              and not m.is_fused]
    if not layers:
        return None
    refusals, world_sizes = Counter(), Counter()
    for layer in layers:
        refusal = layer.fold_refusal()
        if refusal is not None:
            refusals[refusal] += 1
            continue
        sync_norm = next((m for m in layer.modules()
                          if isinstance(m, SYNC_NORMS)), None)
        if sync_norm is not None:
            group = statistics_group(sync_norm)
            world_sizes[1 if group is None else dist.get_world_size(group)] \
                += 1
    folded = len(layers) - sum(refusals.values())
    line = (f'{owner} trains {folded} of {len(layers)} re-parameterizable '
            'layers folded by batch statistics')
    for size in sorted(world_sizes):
        line += (f'; SyncBN on {world_sizes[size]} of them: statistics '
                 f'all-reduced over {size} processes' if size > 1 else
                 f'; SyncBN on one process ({world_sizes[size]} of them): '
                 "folded with this process's statistics")
    if refusals:
        line += '; branch by branch: ' + ', '.join(
            f'{count} {FOLD_REFUSALS[reason].format(detail)}'
            for (reason, detail), count in sorted(refusals.items()))
    return line + '.'
