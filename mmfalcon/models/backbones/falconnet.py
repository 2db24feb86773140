import logging
import math
from typing import Dict, Optional, Sequence, Union

import torch.nn as nn
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks import DropPath
from mmengine.logging import print_log

from mmfalcon.registry import MODELS, register
from ..layers import (ConvNorm, FasterNetBlock, InvertedResidual, RefCO,
                      RepSO, SandglassBlock, best_window)
from .base import FusableBackbone, check_batch_norm, default_init_cfg

_dense_fallbacks_logged = set()


def build_channel_op(in_channels, out_channels, reduction, num_branches,
                     norm_cfg, deploy):
    """RefCO when an SF-Conv window exists, else a dense 1x1 conv + BN."""
    if best_window(in_channels, out_channels, reduction) is not None:
        return RefCO(in_channels, out_channels, reduction,
                     num_branches=num_branches, norm_cfg=norm_cfg,
                     deploy=deploy)
    if (in_channels, out_channels) not in _dense_fallbacks_logged:
        _dense_fallbacks_logged.add((in_channels, out_channels))
        print_log(
            f'FalconNet: no feasible SF-Conv window for {in_channels} -> '
            f'{out_channels} channels (reduction {reduction}); using a '
            'dense 1x1 conv.', logger='current', level=logging.WARNING)
    return ConvNorm(in_channels, out_channels, 1, norm_cfg=norm_cfg,
                    deploy=deploy)


class MetaLightBlock(nn.Module):
    """Meta Light Block (FalconNet paper, "Exploring the Meta Basic
    Block").

    ``x + channel_op2(act(RepSO(act(channel_op1(x)))))`` with RefCO as both
    channel operators (C -> lambda*C -> C) and RepSO as spatial operator.

    Args:
        channels (int): Input and output channels C.
        expand_ratio (int): Expansion lambda. Defaults to 4.
        dilation (int): Dilation of the spatial operator. Defaults to 1.
        num_spatial_branches (int): Parallel 3x3 branches N of RepSO.
            Defaults to 3.
        num_channel_branches (int): Parallel branches M of RefCO.
            Defaults to 3.
        reduction (int): SF-Conv channel reduction R. Defaults to 2.
        drop_path (float): Stochastic depth rate. Defaults to 0.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='ReLU')``.
        deploy (bool): Build fused layers directly. Defaults to False.
    """

    def __init__(self, channels, expand_ratio=4, dilation=1,
                 num_spatial_branches=3, num_channel_branches=3, reduction=2,
                 drop_path=0., norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'), deploy=False):
        super().__init__()
        hidden = channels * expand_ratio
        self.channel_op1 = build_channel_op(channels, hidden, reduction,
                                            num_channel_branches, norm_cfg,
                                            deploy)
        self.act1 = build_activation_layer(act_cfg)
        self.spatial_op = RepSO(hidden, dilation=dilation,
                                num_3x3=num_spatial_branches,
                                norm_cfg=norm_cfg, deploy=deploy)
        self.act2 = build_activation_layer(act_cfg)
        self.channel_op2 = build_channel_op(hidden, channels, reduction,
                                            num_channel_branches, norm_cfg,
                                            deploy)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else (
            nn.Identity())

    def forward(self, x):
        out = self.act1(self.channel_op1(x))
        out = self.channel_op2(self.act2(self.spatial_op(out)))
        return x + self.drop_path(out)


def _inverted_residual(channels, dilation=1, drop_path=0., **kwargs):
    """LightNet adapter: an IRB keeps the width and has no drop path."""
    return InvertedResidual(channels, channels, dilation=dilation, **kwargs)


LIGHTNET_BLOCKS = {
    'MetaLightBlock': MetaLightBlock,
    'InvertedResidual': _inverted_residual,
    'FasterNetBlock': FasterNetBlock,
    'SandglassBlock': SandglassBlock,
}

# Where the stem's shortcut joins (the paper only draws it); it can only
# wrap the stride-1 3x3 DW conv, the one stem layer whose input and output
# shapes match.
STEM_SHORTCUTS = ('after_act', 'before_act', None)


class LightNetStem(nn.Module):
    """LightNet stem (FalconNet paper, "Designing the overall
    architecture"), output stride 4.

    3x3 s2 conv -> 3x3 DW conv with a shortcut -> 1x1 conv -> 3x3 DW s2 conv
    (norm, no activation).

    Args:
        out_channels (int): Output channels (the first stage width C1).
        mid_channels (int): Width of the first two convs.
        shortcut (str | None): Where the shortcut around the 3x3 DW conv
            joins: ``'after_act'`` adds the input to the DW conv's activated
            output, ``'before_act'`` adds it before the activation, ``None``
            drops the shortcut.
        norm_cfg (dict): Norm config.
        act_cfg (dict): Activation config.
        deploy (bool): Build fused convs directly.
    """

    def __init__(self, out_channels, mid_channels, shortcut, norm_cfg,
                 act_cfg, deploy):
        super().__init__()
        if shortcut not in STEM_SHORTCUTS:
            raise ValueError(f'stem_shortcut={shortcut!r}: expected one of '
                             f'{STEM_SHORTCUTS}.')
        self.shortcut = shortcut
        common = dict(norm_cfg=norm_cfg, deploy=deploy)
        self.conv = ConvNorm(3, mid_channels, 3, stride=2, act_cfg=act_cfg,
                             **common)
        # 'before_act' needs the sum before the activation, so the DW conv
        # then leaves its activation to the stem.
        self.dw_conv = ConvNorm(
            mid_channels, mid_channels, 3, groups=mid_channels,
            act_cfg=None if shortcut == 'before_act' else act_cfg, **common)
        self.dw_act = build_activation_layer(
            act_cfg) if shortcut == 'before_act' else None
        self.pw_conv = ConvNorm(mid_channels, out_channels, 1,
                                act_cfg=act_cfg, **common)
        self.down_conv = ConvNorm(out_channels, out_channels, 3, stride=2,
                                  groups=out_channels, **common)

    def forward(self, x):
        x = self.conv(x)
        if self.shortcut is None:
            x = self.dw_conv(x)
        elif self.shortcut == 'after_act':
            x = x + self.dw_conv(x)
        else:
            x = self.dw_act(x + self.dw_conv(x))
        return self.down_conv(self.pw_conv(x))


@register(MODELS)
class FalconNet(FusableBackbone):
    """FalconNet / LightNet backbone (Cai & Shen, "FalconNet: Factorization
    for the Light-weight ConvNets", ICONIP 2023, arXiv 2306.06365).

    A LightNet frame (stem, four stages at strides 4/8/16/32, grouped 2x2
    subsampling between stages, optional 1x1 head conv) hosting Meta Light
    Blocks (RepSO + RefCO) or, to test the frame on its own, other blocks.

    Args:
        arch (str | dict): A name in ``arch_zoo`` or a dict with keys
            ``depths`` and ``widths`` (4 ints each). Defaults to 'base'.
        block (str | dict): Block type, one of ``LIGHTNET_BLOCKS``
            ('MetaLightBlock', 'InvertedResidual', 'FasterNetBlock',
            'SandglassBlock'), or a dict with ``type`` and extra block
            arguments. Defaults to 'MetaLightBlock'.
        stem_ratio (float): Stem hidden width as a fraction of the first
            stage width. Defaults to 0.5.
        stem_shortcut (str | None): Where the stem's shortcut joins. The
            paper only shows it in a figure; it can wrap just the stride-1
            3x3 DW conv (the one stem layer whose input and output shapes
            match): ``'after_act'`` (``x + act(bn(dw(x)))``),
            ``'before_act'`` (``act(x + bn(dw(x)))``) or ``None`` (no
            shortcut). Defaults to 'after_act'.
        head_channels (int): Output channels of the head conv, built only
            when index 4 is in ``out_indices``. Defaults to 1024.
        out_indices (int | Sequence[int]): Outputs to return, in increasing
            order whatever the order given: 0-3 the stages (strides 4, 8,
            16, 32), 4 the head conv. Defaults to (3, ).
        out_stride (int): 32, 16 or 8. Below 32 the subsampling before the
            last (16) or last two (8) stages keeps the resolution (stride
            1, same weights) and those stages' spatial convs are dilated
            by 2 and 4 instead, as in mmseg's dilated MobileNetV2.
            Defaults to 32.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and
            stages 1..k. Defaults to -1.
        norm_eval (bool): Keep BN layers in eval mode while training.
            Defaults to False.
        norm_cfg (dict): Norm config; a batch norm (``BN``, ``SyncBN``),
            since fusion folds running statistics. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='ReLU')``.
        drop_path_rate (float): Stochastic depth rate, linear over blocks.
            Defaults to 0.
        deploy (bool): Build the fused (deploy) form directly.
            Defaults to False.
        pretrained (str | None): Deprecated mmseg-style checkpoint path,
            turned into ``init_cfg``. Defaults to None.
        init_cfg (dict | list[dict] | None): Initialization config.

    Attributes:
        out_channels (tuple[int]): Channels of each returned output, in
            order.
    """
    # 'base' is the paper's default; 'tiny' and 'small' are this project's
    # own narrower/shallower variants (not from the paper).
    arch_zoo: Dict[str, Dict[str, Sequence[int]]] = {
        'base': dict(depths=[3, 3, 9, 3], widths=[32, 64, 128, 256]),
        'small': dict(depths=[2, 2, 6, 2], widths=[24, 48, 96, 192]),
        'tiny': dict(depths=[1, 1, 2, 1], widths=[16, 32, 64, 128]),
    }
    arch_keys = ('depths', 'widths')
    num_stages = 4

    def __init__(self,
                 arch: Union[str, dict] = 'base',
                 block: Union[str, dict] = 'MetaLightBlock',
                 stem_ratio: float = 0.5,
                 stem_shortcut: Optional[str] = 'after_act',
                 head_channels: int = 1024,
                 out_indices: Sequence[int] = (3, ),
                 out_stride: int = 32,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 drop_path_rate: float = 0.,
                 deploy: bool = False,
                 pretrained=None,
                 init_cfg=None):
        super().__init__(default_init_cfg(init_cfg, pretrained))
        self.arch = self._parse_arch(arch)
        depths, widths = self.arch['depths'], self.arch['widths']
        if isinstance(out_indices, int):
            out_indices = (out_indices, )
        bad = [i for i in out_indices if not 0 <= i <= self.num_stages]
        if bad or len(out_indices) == 0:
            raise ValueError(
                f'out_indices {tuple(out_indices)} out of range: each index '
                f'must be in 0..{self.num_stages} (0-3 the stages, '
                f'{self.num_stages} the head conv).')
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages={frozen_stages} out of range: '
                             f'expected -1..{self.num_stages}.')
        if out_stride not in (32, 16, 8):
            raise ValueError(f'out_stride={out_stride!r}: expected 32, 16 '
                             'or 8.')
        check_batch_norm(norm_cfg, type(self).__name__)
        # forward returns the outputs in network order
        self.out_indices = tuple(sorted(set(out_indices)))
        self.out_channels = tuple(
            head_channels if i == self.num_stages else widths[i]
            for i in self.out_indices)
        self.out_stride = out_stride
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        block_type, block_kwargs = self._parse_block(block)

        self.stem = LightNetStem(widths[0], int(widths[0] * stem_ratio),
                                 stem_shortcut, norm_cfg, act_cfg, deploy)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        in_channels, stride, dilation = widths[0], 4, 1
        for i, (depth, width) in enumerate(zip(depths, widths)):
            layers = []
            if i > 0:  # subsampling: grouped 2x2 stride-2 conv + BN
                down = stride < out_stride
                # Past out_stride: stride 1, 'same' padding, dilated like
                # the stage before it, so the weights stay interchangeable.
                layers.append(
                    ConvNorm(in_channels, width, 2, stride=2 if down else 1,
                             padding=0 if down else 'same',
                             dilation=dilation,
                             groups=math.gcd(in_channels, width),
                             norm_cfg=norm_cfg, deploy=deploy))
                if down:
                    stride *= 2
                else:
                    dilation *= 2
            for _ in range(depth):
                layers.append(LIGHTNET_BLOCKS[block_type](
                    width, dilation=dilation, drop_path=rates.pop(0),
                    norm_cfg=norm_cfg, act_cfg=act_cfg, deploy=deploy,
                    **block_kwargs))
            self.stages.append(nn.Sequential(*layers))
            in_channels = width
        self.head_conv = ConvNorm(
            in_channels, head_channels, 1, norm_cfg=norm_cfg,
            act_cfg=act_cfg, deploy=deploy
        ) if self.num_stages in self.out_indices else None
        self._freeze_stages()

    def _check_arch(self, arch):
        for key in self.arch_keys:
            values = arch[key]
            if len(values) != self.num_stages or min(values) < 1:
                raise ValueError(f'arch[{key!r}]={values!r}: expected '
                                 f'{self.num_stages} positive ints.')

    @staticmethod
    def _parse_block(block):
        block = dict(type=block) if isinstance(block, str) else dict(block)
        block_type = block.pop('type', None)
        if block_type not in LIGHTNET_BLOCKS:
            raise ValueError(f'Unknown block {block_type!r}; expected one '
                             f'of {sorted(LIGHTNET_BLOCKS)}.')
        return block_type, block

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        if self.head_conv is not None:
            outs.append(self.head_conv(x))
        return tuple(outs)

    def _stages(self):
        return [self.stem, *self.stages]
