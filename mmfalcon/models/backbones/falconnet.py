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
from ..layers.batch_stats import describe_folding
from ..layers.sfconv import check_sfconv_impl
from .base import FusableBackbone, check_batch_norm, default_init_cfg

_dense_fallbacks_logged = set()


def build_channel_op(in_channels, out_channels, reduction, num_branches,
                     conv_cfg, norm_cfg, deploy, fold_batch_stats,
                     sfconv_impl):
    """RefCO when an SF-Conv window exists, else a dense 1x1 conv + BN."""
    if best_window(in_channels, out_channels, reduction) is not None:
        return RefCO(in_channels, out_channels, reduction,
                     num_branches=num_branches, conv_cfg=conv_cfg,
                     norm_cfg=norm_cfg, deploy=deploy,
                     fold_batch_stats=fold_batch_stats, impl=sfconv_impl)
    if (in_channels, out_channels) not in _dense_fallbacks_logged:
        _dense_fallbacks_logged.add((in_channels, out_channels))
        print_log(
            f'FalconNet: no feasible SF-Conv window for {in_channels} -> '
            f'{out_channels} channels (reduction {reduction}); using a '
            'dense 1x1 conv.', logger='current', level=logging.WARNING)
    return ConvNorm(in_channels, out_channels, 1, conv_cfg=conv_cfg,
                    norm_cfg=norm_cfg, deploy=deploy)


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
        conv_cfg (dict | None): Config of the training convs (see
            :class:`~mmfalcon.models.layers.ConvNorm`); ``None`` for
            ``nn.Conv2d``. Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='ReLU')``.
        deploy (bool): Build fused layers directly. Defaults to False.
        fold_batch_stats (bool): Train RepSO and RefCO with their branches
            folded by batch statistics where that is exact; False runs the
            branches one by one. Defaults to True.
        sfconv_impl (str): How the fused RefCO pairs run in PyTorch,
            ``'matmul'`` or ``'conv'`` (see
            :class:`~mmfalcon.models.layers.FactorizedPointwise`).
            Defaults to 'matmul'.
    """

    def __init__(self, channels, expand_ratio=4, dilation=1,
                 num_spatial_branches=3, num_channel_branches=3, reduction=2,
                 drop_path=0., conv_cfg=None, norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'), deploy=False,
                 fold_batch_stats=True, sfconv_impl='matmul'):
        super().__init__()
        hidden = channels * expand_ratio
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy,
                      fold_batch_stats=fold_batch_stats)
        channel_op = dict(reduction=reduction,
                          num_branches=num_channel_branches,
                          sfconv_impl=sfconv_impl, **common)
        self.channel_op1 = build_channel_op(channels, hidden, **channel_op)
        self.act1 = build_activation_layer(act_cfg)
        self.spatial_op = RepSO(hidden, dilation=dilation,
                                num_3x3=num_spatial_branches, **common)
        self.act2 = build_activation_layer(act_cfg)
        self.channel_op2 = build_channel_op(hidden, channels, **channel_op)
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

# Block arguments FalconNet sets itself (the block config must not).
BLOCK_ARGS_SET_BY_FALCONNET = ('dilation', 'drop_path', 'conv_cfg', 'norm_cfg',
                               'act_cfg', 'deploy', 'fold_batch_stats',
                               'sfconv_impl')

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
        in_channels (int): Input image channels.
        out_channels (int): Output channels (the first stage width C1).
        mid_channels (int): Width of the first two convs.
        shortcut (str | None): Where the shortcut around the 3x3 DW conv
            joins: ``'after_act'`` adds the input to the DW conv's activated
            output, ``'before_act'`` adds it before the activation, ``None``
            drops the shortcut.
        conv_cfg (dict | None): Config of the training convs.
        norm_cfg (dict): Norm config.
        act_cfg (dict): Activation config.
        deploy (bool): Build fused convs directly.
    """

    def __init__(self, in_channels, out_channels, mid_channels, shortcut,
                 conv_cfg, norm_cfg, act_cfg, deploy):
        super().__init__()
        if shortcut not in STEM_SHORTCUTS:
            raise ValueError(f'stem_shortcut={shortcut!r}: expected one of '
                             f'{STEM_SHORTCUTS}.')
        self.shortcut = shortcut
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy)
        self.conv = ConvNorm(in_channels, mid_channels, 3, stride=2,
                             act_cfg=act_cfg, **common)
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
        in_channels (int): Input image channels. Defaults to 3.
        block (str | dict): Block type, one of ``LIGHTNET_BLOCKS``
            ('MetaLightBlock', 'InvertedResidual', 'FasterNetBlock',
            'SandglassBlock'), or a dict with ``type`` and extra block
            arguments (not those FalconNet passes to every block itself:
            ``BLOCK_ARGS_SET_BY_FALCONNET``). Defaults to
            'MetaLightBlock'.
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
            16, 32), 4 the head conv; negative indices count from the end
            (-1 the head conv). Defaults to (3, ).
        out_stride (int): 32, 16 or 8. Below 32 the subsampling before the
            last (16) or last two (8) stages keeps the resolution (stride
            1, same weights) and those stages' spatial convs are dilated
            by 2 and 4 instead, as in mmseg's dilated MobileNetV2.
            Defaults to 32.
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and
            stages 1..k. Defaults to -1.
        norm_eval (bool): Keep BN layers in eval mode while training.
            Defaults to False.
        conv_cfg (dict | None): mmcv config of every training conv, built
            by ``build_conv_layer``; ``None`` for ``nn.Conv2d``. A conv that
            fusion folds must run ``nn.Conv2d``'s own zero-padded forward
            (e.g. a subclass with its own init), see
            :func:`~mmfalcon.models.layers.conv_norm.build_foldable_conv`.
            The fused (deploy) convs are plain ``nn.Conv2d`` whatever the
            config. Defaults to None.
        norm_cfg (dict): Norm config; a batch norm (``BN``, ``SyncBN``),
            since fusion folds running statistics. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='ReLU')``.
        drop_path_rate (float): Stochastic depth rate, linear over blocks.
            Defaults to 0.
        fold_batch_stats (bool): Train the Meta Light Blocks' RepSO and
            RefCO with their branches folded into one conv by the batch's
            statistics where that is exact (stride 1, ``BN`` or ``SyncBN``
            in training mode; SyncBN's across processes): the same outputs,
            gradients and running statistics, faster. False runs the
            branches one by one (for comparison). Other blocks have no
            branches to fold. The first training forward logs one line:
            how many layers fold, and why the others do not (again only
            when that changes). Defaults to True.
        sfconv_impl (str): How the fused SF-Conv pairs (RefCO) run in
            PyTorch: ``'matmul'`` (two batched matrix products, the faster
            form on the CPUs measured) or ``'conv'`` (grouped 1x1 convs and
            a channel shuffle); the same function and weights. ONNX export
            picks its own form. Defaults to 'matmul'.
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
    # output index -> module; the stem, then the stages, in freezing order
    output_names = tuple(f'stages.{i}' for i in range(num_stages)) + (
        'head_conv', )
    stage_names = ('stem', ) + output_names[:num_stages]

    def __init__(self,
                 arch: Union[str, dict] = 'base',
                 in_channels: int = 3,
                 block: Union[str, dict] = 'MetaLightBlock',
                 stem_ratio: float = 0.5,
                 stem_shortcut: Optional[str] = 'after_act',
                 head_channels: int = 1024,
                 out_indices: Sequence[int] = (3, ),
                 out_stride: int = 32,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU'),
                 drop_path_rate: float = 0.,
                 fold_batch_stats: bool = True,
                 sfconv_impl: str = 'matmul',
                 deploy: bool = False,
                 pretrained=None,
                 init_cfg=None):
        super().__init__(default_init_cfg(init_cfg, pretrained))
        self.arch = self._parse_arch(arch)
        depths, widths = self.arch['depths'], self.arch['widths']
        self._parse_indices(out_indices, frozen_stages, self.output_names,
                            self.stage_names)
        if out_stride not in (32, 16, 8):
            raise ValueError(f'out_stride={out_stride!r}: expected 32, 16 '
                             'or 8.')
        check_batch_norm(norm_cfg, type(self).__name__)
        check_sfconv_impl(sfconv_impl)
        self.out_channels = tuple(
            head_channels if i == self.num_stages else widths[i]
            for i in self.out_indices)
        self.out_stride = out_stride
        self.norm_eval = norm_eval
        # the folding line last logged (train() logs it when it changes)
        self._folding_logged = None
        block_type, block_kwargs = self._parse_block(block)
        if block_type == 'MetaLightBlock':
            block_kwargs.update(fold_batch_stats=fold_batch_stats,
                                sfconv_impl=sfconv_impl)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy)

        self.stem = LightNetStem(in_channels, widths[0],
                                 int(widths[0] * stem_ratio), stem_shortcut,
                                 act_cfg=act_cfg, **common)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        channels, stride, dilation = widths[0], 4, 1
        for i, (depth, width) in enumerate(zip(depths, widths)):
            layers = []
            if i > 0:  # subsampling: grouped 2x2 stride-2 conv + BN
                down = stride < out_stride
                # Past out_stride: stride 1, 'same' padding, dilated like
                # the stage before it, so the weights stay interchangeable.
                layers.append(
                    ConvNorm(channels, width, 2, stride=2 if down else 1,
                             padding=0 if down else 'same',
                             dilation=dilation,
                             groups=math.gcd(channels, width), **common))
                if down:
                    stride *= 2
                else:
                    dilation *= 2
            for _ in range(depth):
                layers.append(LIGHTNET_BLOCKS[block_type](
                    width, dilation=dilation, drop_path=rates.pop(0),
                    act_cfg=act_cfg, **common, **block_kwargs))
            self.stages.append(nn.Sequential(*layers))
            channels = width
        self.head_conv = ConvNorm(
            channels, head_channels, 1, act_cfg=act_cfg, **common
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
        owned = sorted(set(block) & set(BLOCK_ARGS_SET_BY_FALCONNET))
        if owned:
            raise ValueError(
                f'block={block_type!r} sets {owned}, which FalconNet passes '
                'to every block itself: set them as FalconNet arguments.')
        return block_type, block

    def train(self, mode=True):
        super().train(mode)
        if mode:
            # here, not in forward: a log call in forward would break the
            # graph torch.compile traces (compile=True in a config)
            self._log_folding()
        return self

    def _log_folding(self):
        """Log how the layers train (:func:`describe_folding`), unless the
        same line was logged last."""
        line = describe_folding(self, type(self).__name__)
        if line is not None and line != self._folding_logged:
            print_log(line, logger='current')
            self._folding_logged = line

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
