"""Fusion (re-parameterization): the folding helpers, the layer mixin and
the walker that fuses a whole model.

One folding helper set (conv+BN, BN alone, identity, kernel padding); one
mixin, :class:`FusableLayer`, that every layer with a training form and a
fused (deploy) form inherits, whose fused form always lives in a child named
``fused`` (which tells fused and unfused checkpoints apart); and
:func:`fuse_model`, which knows no model by name.
"""
import inspect
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn import fuse_conv_bn as fold_conv_norm_children

FUSED = 'fused'


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return the per-channel ``(scale, shift)`` an eval-mode BN applies."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_conv_bn(weight: torch.Tensor, bias: Optional[torch.Tensor],
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


class FusableLayer(nn.Module):
    """Mixin for a layer that has a training form and a fused deploy form.

    Subclasses implement :meth:`_make_fused` (the empty fused module) and
    :meth:`_fused_state` (its weights computed from the training branches),
    and list their training children in ``_branch_names``.
    """
    _branch_names: Sequence[str] = ()

    @property
    def is_fused(self) -> bool:
        return FUSED in self._modules

    def _make_fused(self) -> nn.Module:
        raise NotImplementedError

    def _fused_state(self) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def fuse(self) -> 'FusableLayer':
        """Replace the training branches by the fused layer, in place
        (idempotent).

        Returns:
            FusableLayer: ``self``, now fused. timm's walker
            (``timm.utils.reparameterize_model``) puts what ``fuse()``
            returns in the layer's place in its parent. Only the layer
            itself, not its ``fused`` child, keeps the model's function
            (a ConvNorm's or PreNormConv's activation runs after the fused
            conv) and its checkpoint keys (the ``fused`` prefix tells fused
            and unfused checkpoints apart), so a model walked by timm
            equals one fused by :func:`fuse_model`.
        """
        if self.is_fused:
            return self
        ref = next(self.parameters())
        fused = self._make_fused().to(device=ref.device, dtype=ref.dtype)
        fused.load_state_dict(self._fused_state())
        fused.train(self.training)  # a new module starts in training mode
        for name in self._branch_names:
            if hasattr(self, name):
                delattr(self, name)
        self.fused = fused
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        keys = [k for k in state_dict if k.startswith(prefix)]
        ckpt_fused = any(k.startswith(prefix + FUSED + '.') for k in keys)
        ckpt_unfused = not all(k.startswith(prefix + FUSED + '.')
                               for k in keys)
        name = prefix.rstrip('.') or type(self).__name__
        if ckpt_fused and not self.is_fused:
            raise RuntimeError(
                f'The checkpoint holds the fused (deploy) form of {name!r} '
                'but the model is unfused. Load it into the whole model (an '
                'mmfalcon backbone and the model holding it take the form '
                'of the checkpoint) or call mmfalcon.fuse_model(model) '
                'before loading.')
        if ckpt_unfused and not ckpt_fused and self.is_fused:
            raise RuntimeError(
                f'The checkpoint holds the unfused (training) form of '
                f'{name!r} but the model is fused. Load it into an unfused '
                'model first, then call mmfalcon.fuse_model(model).')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _foreign_fuse(module: nn.Module) -> Optional[Callable[[], None]]:
    """The fusing method of a layer from another library: mmpretrain's
    ``switch_to_deploy()`` or timm's ``reparameterize()``. mmfalcon's own
    modules fuse through :class:`FusableLayer` only."""
    if type(module).__module__.split('.')[0] == 'mmfalcon':
        return None
    for name in ('switch_to_deploy', 'reparameterize'):
        method = getattr(module, name, None)
        # a method of that name that needs arguments (a VAE's
        # ``reparameterize(mu, logvar)``) is something else
        if callable(method) and not any(
                param.default is param.empty and param.kind in (
                    param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD,
                    param.KEYWORD_ONLY)
                for param in inspect.signature(method).parameters.values()):
            return method
    return None


def _folds_norm_after_conv(module: nn.Module) -> bool:
    """A ConvModule whose norm runs right after its conv (not pre-norm)."""
    if not isinstance(module, ConvModule) or not module.with_norm:
        return False
    return module.order.index('conv') < module.order.index('norm')


@torch.no_grad()
def fuse_model(model: nn.Module) -> nn.Module:
    """Fuse ``model`` in place for inference; works on any model.

    Inner layers before the layers that contain them: mmfalcon layers fuse
    themselves in place (:meth:`FusableLayer.fuse`), layers of other
    libraries are asked to through their own ``switch_to_deploy()`` /
    ``reparameterize()``, and every remaining Conv+BN pair of an mmcv
    ``ConvModule`` (necks, heads) is folded by mmcv's ``fuse_conv_bn``.
    Fusing folds BN running statistics, so the result computes the
    eval-mode function. Knows no model by name, sets no attribute on
    modules it does not own, and is idempotent. timm's
    ``reparameterize_model`` fuses mmfalcon's layers the same way (it calls
    their ``fuse()``), but leaves the ``ConvModule`` BNs unfolded.

    Args:
        model (nn.Module): Any model; fused in place.

    Returns:
        nn.Module: ``model``, for chaining.
    """
    for module in reversed(list(model.modules())):
        if isinstance(module, FusableLayer):
            module.fuse()
        else:
            method = _foreign_fuse(module)
            if method is not None:
                method()
    for module in list(model.modules()):
        if _folds_norm_after_conv(module):
            fold_conv_norm_children(module)
    return model


def is_fused(model: nn.Module) -> bool:
    """True when ``model`` holds mmfalcon fusable layers, all fused."""
    layers = [m for m in model.modules() if isinstance(m, FusableLayer)]
    return bool(layers) and all(m.is_fused for m in layers)
