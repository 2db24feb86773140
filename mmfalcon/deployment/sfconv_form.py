"""The form in which a fused SF-Conv pair is exported to ONNX.

PyTorch runs a fused SF-Conv (:class:`~mmfalcon.models.layers.sfconv.
FactorizedPointwise`) fastest as two batched matrix products. ONNX Runtime
does not: it leaves MatMul, its bias Add and the shuffle's Transpose as
separate kernels. Its fast kernels are the blocked-layout (NCHWc)
convolutions, which fuse bias, ReLU and a residual Add, but it only turns a
grouped conv into one when every group's input and output channel counts
are multiples of its channel block (16 with AVX-512, 8 with AVX2). The
SF-Conv groups are smaller (K -> K/R channels, then G -> C_out R/K), so
as plain grouped convs they stay NCHW kernels with layout reorders around
them. :func:`sfconv_export_form` picks, per layer, one of two exact forms
ONNX Runtime blocks: the pair with block-aligned groups
(:class:`BlockAlignedPointwise`) or one dense 1x1 conv
(:class:`DensePointwise`).
"""
import copy
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmfalcon.models.layers.sfconv import FactorizedPointwise

# The forms a fused SF-Conv pair can be exported in
# (:func:`sfconv_export_form`): the cost rule, block-aligned grouped convs
# everywhere, one dense conv everywhere, the pair's own grouped convs with
# the shuffle, or its MatMul form. All compute the same function.
SFCONV_FORMS = ('auto', 'aligned', 'dense', 'grouped', 'matmul')

# ONNX Runtime's NCHWc block on AVX-512 CPUs; a multiple of AVX2's 8, so
# merged groups are aligned there too.
NCHWC_BLOCK = 16


def aligned_merge(groups: int, in_per_group: int, out_per_group: int,
                  block: int = NCHWC_BLOCK) -> Optional[int]:
    """How many adjacent groups of a grouped conv to merge into one.

    Args:
        groups (int): Groups of the conv.
        in_per_group (int): Input channels per group.
        out_per_group (int): Output channels per group.
        block (int): Channel block the merged groups align to. Defaults to
            :data:`NCHWC_BLOCK`.

    Returns:
        int | None: The smallest divisor m of ``groups`` for which ``m *
        in_per_group`` and ``m * out_per_group`` are multiples of
        ``block``; None when there is none.
    """
    for name, value in (('groups', groups), ('in_per_group', in_per_group),
                        ('out_per_group', out_per_group), ('block', block)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    for merge in range(1, groups + 1):
        if groups % merge == 0 and (merge * in_per_group) % block == 0 and (
                merge * out_per_group) % block == 0:
            return merge
    return None


def block_diagonal(weight: torch.Tensor, groups: int,
                   merge: int) -> torch.Tensor:
    """A grouped 1x1 conv weight as the weight of ``groups / merge``
    groups: each merged group holds ``merge`` original groups on its
    diagonal and zeros elsewhere, so it computes the same outputs.

    Args:
        weight (torch.Tensor): ``[C_out, C_in / groups, 1, 1]``.
        groups (int): Groups of ``weight``.
        merge (int): Adjacent groups per merged group; divides ``groups``.

    Returns:
        torch.Tensor: ``[C_out, merge * C_in / groups, 1, 1]``.
    """
    if merge < 1 or groups % merge:
        raise ValueError(f'merge={merge} must be a positive divisor of '
                         f'groups={groups}')
    out_channels, in_per_group = weight.shape[:2]
    out_per_group = out_channels // groups
    blocks = weight.reshape(groups // merge, merge, out_per_group,
                            in_per_group)
    merged = weight.new_zeros(groups // merge, merge, out_per_group, merge,
                              in_per_group)
    for i in range(merge):
        merged[:, i, :, i] = blocks[:, i]
    return merged.reshape(out_channels, merge * in_per_group, 1, 1)


def _check_pair(fused: nn.Module):
    if not isinstance(fused, FactorizedPointwise):
        raise TypeError(f'expected a FactorizedPointwise, got '
                        f'{type(fused).__name__}')


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone(), requires_grad=False)


class BlockAlignedPointwise(nn.Module):
    """A fused SF-Conv pair as grouped 1x1 conv with bias, channel shuffle
    (Reshape / Transpose / Reshape), grouped 1x1 conv with bias, each
    conv's adjacent groups merged (:func:`aligned_merge`) so that ONNX
    Runtime runs it as an NCHWc conv fused with the bias and the ReLU or
    residual Add that follows. A conv that no merge aligns keeps its
    groups: extra zeros would not buy the blocked kernel.

    Args:
        fused (FactorizedPointwise): The fused pair; its weights are
            copied, it is not changed.
        block (int): Channel block the merged groups align to. Defaults to
            :data:`NCHWC_BLOCK`.
    """

    def __init__(self, fused: FactorizedPointwise,
                 block: int = NCHWC_BLOCK):
        super().__init__()
        _check_pair(fused)
        self.groups, self.positions = fused.groups, fused.positions
        merge1, merge2 = (merge or 1 for merge in _merges(fused, block))
        self.groups1 = fused.groups // merge1
        self.groups2 = fused.positions // merge2
        with torch.no_grad():
            self.weight1 = _frozen(
                block_diagonal(fused.weight1, fused.groups, merge1))
            self.weight2 = _frozen(
                block_diagonal(fused.weight2, fused.positions, merge2))
        self.bias1, self.bias2 = _frozen(fused.bias1), _frozen(fused.bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight1, self.bias1, groups=self.groups1)
        n, _, h, w = x.shape
        # hidden channels [G, K/R] -> [K/R, G]: the second conv's groups
        # gather one position of every window
        x = x.reshape(n, self.groups, self.positions, h, w).transpose(
            1, 2).reshape(n, -1, h, w)
        return F.conv2d(x, self.weight2, self.bias2, groups=self.groups2)


class DensePointwise(nn.Module):
    """A fused SF-Conv pair multiplied out into one dense 1x1 conv with
    bias (the pair has no activation in between, so this is exact up to
    float rounding): C_in * C_out multiply-adds per pixel, no shuffle.

    Args:
        fused (FactorizedPointwise): The fused pair; its weights are
            copied, it is not changed.
    """

    def __init__(self, fused: FactorizedPointwise):
        super().__init__()
        _check_pair(fused)
        g, p = fused.groups, fused.positions
        with torch.no_grad():
            # both layers as dense matrices, in float64 so the product adds
            # no rounding of its own
            first = block_diagonal(fused.weight1.double(), g, g).flatten(1)
            second = block_diagonal(fused.weight2.double(), p, p).flatten(1)
            # the second layer reads the hidden channels shuffled:
            # its input j * G + g is the first layer's output g * K/R + j
            shuffle = torch.arange(g * p).reshape(g, p).t().flatten()
            first, bias1 = first[shuffle], fused.bias1.double()[shuffle]
            weight = second @ first
            bias = second @ bias1 + fused.bias2.double()
        dtype = fused.weight1.dtype  # the pair's, float32 for export
        self.weight = _frozen(weight.to(dtype)[..., None, None])
        self.bias = _frozen(bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


def _merges(fused: FactorizedPointwise,
            block: int) -> Tuple[Optional[int], Optional[int]]:
    """:func:`aligned_merge` of the pair's first and second conv."""
    return (aligned_merge(fused.groups, fused.window, fused.positions,
                          block),
            aligned_merge(fused.positions, fused.groups,
                          fused.out_channels // fused.positions, block))


# A dense conv is chosen while it costs at most this many times the
# multiply-adds of the block-aligned pair.
DENSE_COST_RATIO = 2


def check_sfconv_form(form: str) -> None:
    """Refuse a ``form`` that is not one of :data:`SFCONV_FORMS`."""
    if form not in SFCONV_FORMS:
        raise ValueError(f'SF-Conv export form {form!r}: expected one of '
                         f'{SFCONV_FORMS}')


def sfconv_export_form(fused: FactorizedPointwise,
                       block: int = NCHWC_BLOCK,
                       form: str = 'auto') -> nn.Module:
    """The module a fused SF-Conv pair is exported as.

    ``form`` (one of :data:`SFCONV_FORMS`) picks it: ``'aligned'``
    :class:`BlockAlignedPointwise`, ``'dense'`` :class:`DensePointwise`,
    ``'grouped'`` / ``'matmul'`` a copy of the pair running its own
    ``impl='conv'`` / ``'matmul'`` form; ``'auto'`` by this rule:

    * :class:`DensePointwise` where its C_in * C_out multiply-adds are at
      most :data:`DENSE_COST_RATIO` times those of the block-aligned pair
      (small layers, where the shuffle and the second kernel launch cost
      more than the extra products), or where no merge aligns both convs
      of the pair (they would stay slow NCHW grouped convs);
    * :class:`BlockAlignedPointwise` otherwise.

    In FalconNet-base (R=2, expansion 4) the rule picks the dense conv for
    the first stage (32 <-> 128 channels) only, in FalconNet-tiny for the
    first two. Latency of fused FalconNet-base over MobileNetV2's (mmdet's
    at 320, mmseg's os8 at 512) in onnxruntime 1.32, batch 1, 2 threads,
    on an idle AVX-512 Xeon: this rule 0.85 at 320 and 0.63 at 512; the
    MatMul form (PyTorch's) 1.29 and 0.99; at 512 the block-aligned pair
    everywhere 0.64-0.69, grouped convs + shuffle without merging 0.77,
    and one dense conv everywhere 1.4 (on a loaded 2-core AMD machine).
    Each runtime's choice: :attr:`~mmfalcon.deployment.backends.Backend.
    sfconv_form`.

    Args:
        fused (FactorizedPointwise): The fused pair (not changed).
        block (int): ONNX Runtime's channel block to align to. Defaults to
            :data:`NCHWC_BLOCK`.
        form (str): One of :data:`SFCONV_FORMS`. Defaults to ``'auto'``.

    Returns:
        nn.Module: The export form, computing the same as ``fused``.
    """
    _check_pair(fused)
    check_sfconv_form(form)
    if form in ('grouped', 'matmul'):
        pair = copy.deepcopy(fused)
        pair.impl = 'conv' if form == 'grouped' else 'matmul'
        return pair
    if form == 'aligned':
        return BlockAlignedPointwise(fused, block)
    merge1, merge2 = _merges(fused, block)
    if form == 'dense' or merge1 is None or merge2 is None:
        return DensePointwise(fused)
    hidden = fused.groups * fused.positions
    in_channels = fused.groups * fused.window
    pair_cost = hidden * fused.window * merge1 + (
        fused.out_channels * fused.groups * merge2)
    if in_channels * fused.out_channels <= DENSE_COST_RATIO * pair_cost:
        return DensePointwise(fused)
    return BlockAlignedPointwise(fused, block)
