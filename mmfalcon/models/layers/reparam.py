"""Re-parameterization building blocks shared by every fusable layer.

One folding helper set (conv+BN, BN alone, identity, kernel padding) and one
mixin, :class:`Reparameterizable`, that every layer with a training form and
a fused (deploy) form inherits. The fused form always lives in a child named
``fused``, which lets the mixin tell fused and unfused checkpoints apart.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer

FUSED = 'fused'


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return the per-channel ``(scale, shift)`` an eval-mode BN applies."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fuse_conv_bn(weight: torch.Tensor, bias: Optional[torch.Tensor],
                 bn: nn.modules.batchnorm._BatchNorm
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN that follows a conv into the conv's weight/bias."""
    scale, shift = bn_scale_shift(bn)
    shape = (-1, ) + (1, ) * (weight.dim() - 1)
    fused_bias = shift if bias is None else bias * scale + shift
    return weight * scale.reshape(shape), fused_bias


def identity_kernel(channels: int, in_per_group: int,
                    kernel_size: Tuple[int, int],
                    like: torch.Tensor) -> torch.Tensor:
    """A conv kernel that maps every channel onto itself (centre tap 1)."""
    kh, kw = kernel_size
    kernel = like.new_zeros(channels, in_per_group, kh, kw)
    rows = torch.arange(channels, device=like.device)
    kernel[rows, rows % in_per_group, kh // 2, kw // 2] = 1
    return kernel


def pad_kernel(kernel: torch.Tensor, kernel_size: Tuple[int, int]
               ) -> torch.Tensor:
    """Zero-pad a conv kernel, centred, to ``kernel_size``."""
    dh = kernel_size[0] - kernel.shape[2]
    dw = kernel_size[1] - kernel.shape[3]
    return F.pad(kernel, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


class Reparameterizable(nn.Module):
    """Mixin for a layer that has a training form and a fused deploy form.

    Subclasses implement :meth:`_make_fused` (the empty fused module) and
    :meth:`_fused_state` (its weights computed from the training branches),
    and list their training children in ``_branch_names``.
    """
    _branch_names: Sequence[str] = ()

    @property
    def deployed(self) -> bool:
        return FUSED in self._modules

    def _make_fused(self) -> nn.Module:
        raise NotImplementedError

    def _fused_state(self) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Replace the training branches by the fused layer (idempotent)."""
        if self.deployed:
            return
        ref = next(self.parameters())
        fused = self._make_fused().to(device=ref.device, dtype=ref.dtype)
        fused.load_state_dict(self._fused_state())
        fused.train(self.training)  # a new module starts in training mode
        for name in self._branch_names:
            if hasattr(self, name):
                delattr(self, name)
        self.fused = fused

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        keys = [k for k in state_dict if k.startswith(prefix)]
        ckpt_fused = any(k.startswith(prefix + FUSED + '.') for k in keys)
        ckpt_unfused = any(not k.startswith(prefix + FUSED + '.') for k in keys)
        name = prefix.rstrip('.') or type(self).__name__
        if ckpt_fused and not self.deployed:
            raise RuntimeError(
                f'The checkpoint holds the fused (deploy) form of {name!r} '
                'but the model is unfused. Build the model with deploy=True '
                'or call mmfalcon.switch_to_deploy(model) before loading.')
        if ckpt_unfused and not ckpt_fused and self.deployed:
            raise RuntimeError(
                f'The checkpoint holds the unfused (training) form of '
                f'{name!r} but the model is fused. Load it into an unfused '
                'model first, then call mmfalcon.switch_to_deploy(model).')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvNorm(Reparameterizable):
    """Conv + norm (+ activation); fuses into a single conv with bias.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int | tuple): Kernel size.
        stride (int): Stride. Defaults to 1.
        padding (int | tuple | None): Padding; ``None`` keeps the size
            ("same" for odd kernels, dilation aware). Defaults to None.
        dilation (int): Dilation. Defaults to 1.
        groups (int): Groups. Defaults to 1.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict | None): Activation config, ``None`` for none.
            Defaults to None.
        deploy (bool): Build the fused form directly. Defaults to False.
    """
    _branch_names = ('conv', 'bn')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1,
                 padding=None, dilation=1, groups=1,
                 norm_cfg=dict(type='BN'), act_cfg=None, deploy=False):
        super().__init__()
        kernel_size = nn.modules.utils._pair(kernel_size)
        if padding is None:
            padding = tuple(dilation * (k - 1) // 2 for k in kernel_size)
        self.conv_args = dict(
            in_channels=in_channels, out_channels=out_channels,
            kernel_size=kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups)
        if deploy:
            self.fused = self._make_fused()
        else:
            self.conv = nn.Conv2d(**self.conv_args, bias=False)
            self.bn = build_norm_layer(norm_cfg, out_channels)[1]
        self.act = build_activation_layer(act_cfg) if act_cfg else None

    def _make_fused(self):
        return nn.Conv2d(**self.conv_args, bias=True)

    def _fused_state(self):
        weight, bias = fuse_conv_bn(self.conv.weight, None, self.bn)
        return dict(weight=weight, bias=bias)

    def forward(self, x):
        x = self.fused(x) if self.deployed else self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x
