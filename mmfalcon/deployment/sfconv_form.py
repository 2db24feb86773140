"""The form in which a fused SF-Conv pair is exported to ONNX.

PyTorch runs a fused SF-Conv (:class:`~mmfalcon.models.layers.sfconv.
FactorizedPointwise`) fastest as two batched matrix products. ONNX Runtime
does not: it leaves MatMul, its bias Add and the shuffle's Transpose as
separate kernels. Its fast kernels are the blocked-layout (NCHWc)
convolutions, which fuse bias, ReLU and a residual Add, but it only turns a
grouped conv into one when every group's input and output channel counts
are multiples of its channel block (16 with AVX-512, 8 with AVX2). The
SF-Conv groups are smaller (K -> K/R channels, then G -> C_out R/K), so
their grouped convs stay plain NCHW kernels with layout reorders around
them. Merging adjacent groups into block-diagonal groups of aligned size
(zero weights between them, exact) lets ONNX Runtime block both convs, for
more multiply-adds that its blocked kernels run faster; see
:class:`ExportFactorizedPointwise` for the rule and the measurements.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmfalcon.models.layers.sfconv import FactorizedPointwise

# ONNX Runtime's NCHWc block on AVX-512 CPUs; a multiple of AVX2's 8, so
# merged groups are aligned there too.
NCHWC_BLOCK = 16


def aligned_merge(groups: int, in_per_group: int, out_per_group: int,
                  block: int = NCHWC_BLOCK) -> int:
    """How many adjacent groups of a grouped conv to merge into one.

    Args:
        groups (int): Groups of the conv.
        in_per_group (int): Input channels per group.
        out_per_group (int): Output channels per group.
        block (int): Channel block the merged groups align to. Defaults to
            :data:`NCHWC_BLOCK`.

    Returns:
        int: The smallest divisor m of ``groups`` for which ``m *
        in_per_group`` and ``m * out_per_group`` are multiples of
        ``block``; 1 (no merge) when there is none, since extra zeros
        would then not buy the blocked kernel.
    """
    for name, value in (('groups', groups), ('in_per_group', in_per_group),
                        ('out_per_group', out_per_group), ('block', block)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    for merge in range(1, groups + 1):
        if groups % merge == 0 and (merge * in_per_group) % block == 0 and (
                merge * out_per_group) % block == 0:
            return merge
    return 1


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


class ExportFactorizedPointwise(nn.Module):
    """A fused SF-Conv pair as ONNX Runtime runs it fastest: grouped 1x1
    conv with bias, channel shuffle (Reshape / Transpose / Reshape),
    grouped 1x1 conv with bias, each conv's groups merged to
    :func:`aligned_merge` of its channel counts.

    The rule, per conv and independent of the input size: merge the fewest
    adjacent groups that make the per-group input and output channels
    multiples of :data:`NCHWC_BLOCK`, none where no merge does. Then
    ONNX Runtime runs both convs as NCHWc convs fused with the bias and
    the ReLU or residual Add that follows, and the layout reorders shrink
    to the narrow hidden tensor around the shuffle.

    Measured in onnxruntime 1.32 (2 threads, this repository's AVX-512
    machine), fused FalconNet-base whole, against mmdet / mmseg
    MobileNetV2: at 512 (os8) this form 0.73, grouped convs without merging
    0.92, the MatMul form 1.14, the shuffle folded into a dense first or
    second conv 0.95, both layers as one dense conv 1.42; at 320 all
    three conv forms were within noise of each other (0.82-0.89), ahead of
    the MatMul form (0.97). A merge multiplies that conv's multiply-adds
    by the merge factor, which the blocked kernels more than repay here.

    Args:
        fused (FactorizedPointwise): The fused pair; its weights are
            copied, it is not changed.
        block (int): Channel block the merged groups align to. Defaults to
            :data:`NCHWC_BLOCK`.
    """

    def __init__(self, fused: FactorizedPointwise,
                 block: int = NCHWC_BLOCK):
        super().__init__()
        if not isinstance(fused, FactorizedPointwise):
            raise TypeError(f'expected a FactorizedPointwise, got '
                            f'{type(fused).__name__}')
        self.groups, self.positions = fused.groups, fused.positions
        merge1 = aligned_merge(fused.groups, fused.window, fused.positions,
                               block)
        merge2 = aligned_merge(fused.positions, fused.groups,
                               fused.out_channels // fused.positions, block)
        self.groups1 = fused.groups // merge1
        self.groups2 = fused.positions // merge2
        with torch.no_grad():
            self.weight1 = nn.Parameter(
                block_diagonal(fused.weight1, fused.groups, merge1),
                requires_grad=False)
            self.bias1 = nn.Parameter(fused.bias1.clone(),
                                      requires_grad=False)
            self.weight2 = nn.Parameter(
                block_diagonal(fused.weight2, fused.positions, merge2),
                requires_grad=False)
            self.bias2 = nn.Parameter(fused.bias2.clone(),
                                      requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight1, self.bias1, groups=self.groups1)
        n, _, h, w = x.shape
        # hidden channels [G, K/R] -> [K/R, G]: the second conv's groups
        # gather one position of every window
        x = x.reshape(n, self.groups, self.positions, h, w).transpose(
            1, 2).reshape(n, -1, h, w)
        return F.conv2d(x, self.weight2, self.bias2, groups=self.groups2)
