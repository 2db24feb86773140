from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from mmfalcon.registry import MODELS, register
from ..layers.conv_norm import ConvNorm
from ..layers.inverted_residual import InvertedResidual
from ..layers.parc import ParCOuterFrame
from .base import FusableBackbone, check_batch_norm, default_init_cfg

# MV2 expansion of every inverted residual in ParC-Net (as in MobileViT).
MV2_EXPAND_RATIO = 4


@register(MODELS)
class ParCNet(FusableBackbone):
    """ParC-Net backbone (Zhang et al., "ParC-Net: Position Aware Circular
    Convolution with Merits from ConvNets and Transformer", ECCV 2022,
    arXiv 2203.03952; the network of its method section).

    MobileViT layout with the transformer replaced by ParC blocks: a stem,
    MV2 layers, then layers of one stride-2 MV2 + an outer frame, and the
    1x1 head expansion conv ``conv_1x1_exp``. No classifier.

    Output indices: 0 ``stem`` (stride 2), 1..5 ``layer1``..``layer5``
    (strides 2, 4, 8, 16, 32), 6 ``conv_1x1_exp`` (stride 32). Stages after
    the last requested index are built (so official checkpoints load
    strictly) but not run; their parameters get ``requires_grad=False`` so
    distributed training does not wait for their gradients.

    In eval mode the network runs, and returns its outputs, in the
    channels_last memory format (the same values, faster convolutions on
    CPU); in training mode and under a tracer, in the layout it is given.

    Args:
        arch (str | dict): ``'s'`` or ``'xs'``, or a dict with the keys of
            :attr:`arch_zoo` entries: ``stem_channels`` (int),
            ``mv2_layers`` (list of ``[out_channels, num_blocks, stride]``),
            ``parc_layers`` (list of ``[out_channels, channels,
            ffn_channels, num_blocks, kernel_size]``, each stride 2),
            ``fusion`` ('concat' or 'add') and ``head_channels`` (int).
            Defaults to 's'.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (int | Sequence[int]): Outputs to return (see above;
            negative indices count from the end, -1 the head conv).
            Defaults to (4, 5).
        frozen_stages (int): -1 freezes nothing, 0 the stem, k the stem and
            the first k layers (6 also the head conv). Defaults to -1.
        out_stride (int): 32, or 16 to remove the last layer's downsampling
            as the official code does for DeepLabV3: its MV2 depthwise conv
            gets stride 1 and nothing else changes (the ParC kernels follow
            the larger map). Defaults to 32.
        dilate_last (bool): With ``out_stride=16``, also dilate that
            depthwise conv by 2, as mmseg's dilated backbones do to keep the
            receptive field (not in the official code; official weights
            then compute another function). Defaults to False.
        use_pe (bool): Position embeddings in the first ParC block of each
            stage. Defaults to True.
        drop_rate (float): Dropout after each ParC block's FFN.
            Defaults to 0.1.
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
        act_cfg (dict): Activation of the conv layers. Defaults to
            ``dict(type='SiLU', inplace=True)``.
        norm_eval (bool): Keep BN layers in eval mode while training.
            Defaults to False.
        deploy (bool): Build the fused (deploy) form directly.
            Defaults to False.
        pretrained (str | None): Deprecated mmseg-style checkpoint path,
            turned into ``init_cfg``. Defaults to None.
        init_cfg (dict | list[dict] | None): Initialization config.
            Defaults to Kaiming for convs and ones for BN weights.

    Attributes:
        out_channels (tuple[int]): Channels of each returned output, in
            order.
    """
    arch_zoo = {
        's': dict(
            stem_channels=16,
            mv2_layers=[[32, 1, 1], [64, 3, 2]],
            parc_layers=[[96, 192, 384, 2, 32], [128, 256, 512, 4, 16],
                         [160, 320, 640, 3, 8]],
            fusion='concat',
            head_channels=640),
        'xs': dict(
            stem_channels=16,
            mv2_layers=[[32, 1, 1], [64, 3, 2]],
            parc_layers=[[96, 96, 192, 2, 32], [128, 128, 256, 3, 16],
                         [160, 160, 320, 2, 8]],
            fusion='add',
            head_channels=640),
    }
    arch_keys = ('stem_channels', 'mv2_layers', 'parc_layers', 'fusion',
                 'head_channels')

    def __init__(self,
                 arch: Union[str, dict] = 's',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (4, 5),
                 frozen_stages: int = -1,
                 out_stride: int = 32,
                 dilate_last: bool = False,
                 use_pe: bool = True,
                 drop_rate: float = 0.1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU', inplace=True),
                 norm_eval: bool = False,
                 deploy: bool = False,
                 pretrained=None,
                 init_cfg=None):
        super().__init__(default_init_cfg(init_cfg, pretrained))
        self.arch = self._parse_arch(arch)
        if out_stride not in (16, 32):
            raise ValueError(
                f'out_stride must be 32 or 16, got {out_stride!r}')
        if dilate_last and out_stride != 16:
            raise ValueError(f'dilate_last=True needs out_stride=16, got '
                             f'out_stride={out_stride!r}.')
        check_batch_norm(norm_cfg, type(self).__name__)
        self.layer_names = (
            ['stem'] + [
                f'layer{i + 1}' for i in range(
                    len(self.arch['mv2_layers']) +
                    len(self.arch['parc_layers']))
            ] + ['conv_1x1_exp'])
        self._parse_indices(out_indices, frozen_stages, self.layer_names,
                            self.layer_names)
        self.out_stride = out_stride
        self.dilate_last = dilate_last
        self.norm_eval = norm_eval

        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy)
        channels = self.arch['stem_channels']
        self.stem = ConvNorm(in_channels, channels, 3, stride=2,
                             act_cfg=act_cfg, **common)
        layer_channels = [channels]
        index = 1
        for out_channels, num_blocks, stride in self.arch['mv2_layers']:
            blocks = []
            for i in range(num_blocks):
                blocks.append(InvertedResidual(
                    channels, out_channels, stride=stride if i == 0 else 1,
                    expand_ratio=MV2_EXPAND_RATIO, act_cfg=act_cfg,
                    **common))
                channels = out_channels
            self.add_module(f'layer{index}', nn.Sequential(*blocks))
            layer_channels.append(channels)
            index += 1
        parc_layers = self.arch['parc_layers']
        for i, (out_channels, width, ffn_channels, num_blocks,
                kernel_size) in enumerate(parc_layers):
            # out_stride 16: the last layer keeps its resolution
            keep = out_stride == 16 and i == len(parc_layers) - 1
            layer = nn.Sequential(
                InvertedResidual(
                    channels, out_channels, stride=1 if keep else 2,
                    expand_ratio=MV2_EXPAND_RATIO,
                    dilation=2 if keep and dilate_last else 1,
                    act_cfg=act_cfg, **common),
                ParCOuterFrame(
                    out_channels, width, ffn_channels, num_blocks,
                    kernel_size, fusion=self.arch['fusion'], use_pe=use_pe,
                    drop_rate=drop_rate, act_cfg=act_cfg, **common))
            self.add_module(f'layer{index}', layer)
            channels = out_channels
            layer_channels.append(channels)
            index += 1
        self.conv_1x1_exp = ConvNorm(channels, self.arch['head_channels'], 1,
                                     act_cfg=act_cfg, **common)
        layer_channels.append(self.arch['head_channels'])
        self.out_channels = tuple(layer_channels[i] for i in self.out_indices)

        self._num_run = max(self.out_indices) + 1
        for name in self.layer_names[self._num_run:]:
            getattr(self, name).requires_grad_(False)
        self._freeze_stages()

    def _check_arch(self, arch):
        for key, size in (('mv2_layers', 3), ('parc_layers', 5)):
            rows = arch[key]
            if not rows or any(len(row) != size for row in rows):
                raise ValueError(f'arch[{key!r}]={rows!r}: expected a '
                                 f'non-empty list of {size}-element lists.')
        if arch['fusion'] not in ('concat', 'add'):
            raise ValueError(f"arch['fusion'] must be 'concat' or 'add', "
                             f"got {arch['fusion']!r}.")

    def forward(self, x):
        if not self.training and not torch.jit.is_tracing():
            # Inference runs channels_last: oneDNN convolves NHWC tensors
            # directly instead of reordering every conv's input and output
            # (ParCBlock gives its circulant products NCHW copies). A
            # tracer gets the plain layout: ONNX has no memory format.
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for i, name in enumerate(self.layer_names[:self._num_run]):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
