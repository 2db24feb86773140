"""Loading a fused (deploy) checkpoint into a model built from the training
config, through any OpenMMLab loader.

mmdet's ``DetInferencer`` / ``init_detector``, mmseg's ``MMSegInferencer`` /
``init_model`` and both ``tools/test.py`` build the model from the config
(unfused) and load weights with mmengine's ``load_checkpoint``, which only
warns about missing keys. A fused checkpoint has no training branches and no
BN after the necks' and heads' convs, so it would load into nothing, or
leave a BN at its defaults. Here the model changes form to match the
checkpoint before the weights go in: each layer the checkpoint holds fused
is fused first, and a checkpoint holding fused layers must then match the
model key for key and shape for shape, or loading stops with an error.

Both loaders (mmengine's and torch's) call a module's
``_load_from_state_dict`` before they visit its children, so a module that
fuses its children there has the fused children loaded. The whole model
(the detector or segmentor) is reached by a load pre-hook that mmfalcon adds
to every module an mmfalcon backbone is attached to (a torch module
registration hook, installed on import, that looks at nothing else); a
backbone loaded on its own matches itself.
"""
from typing import List

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmcv.cnn import fuse_conv_bn as fold_conv_norm_children
from mmengine.logging import print_log
from torch.nn.modules.batchnorm import _BatchNorm

from mmfalcon.fileio import CheckpointError
from .fusion import FUSED, FusableLayer

# how many offending keys an error names
_SHOWN = 3


class CheckpointMismatchError(CheckpointError):
    """A fused checkpoint that does not match the model it is loaded into."""


def _has_key_under(state_dict, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state_dict)


def _unfolded_conv_norm(module: nn.Module) -> bool:
    """A ConvModule whose BN, run right after its conv, is still there."""
    return (isinstance(module, ConvModule) and module.with_norm
            and module.order.index('conv') < module.order.index('norm')
            and isinstance(module.norm, _BatchNorm))


def _holds_folded(state_dict, prefix: str, module: ConvModule) -> bool:
    """The checkpoint holds ``module`` with its BN folded into the conv: a
    conv bias, and nothing of the norm."""
    return (module.conv.bias is None
            and prefix + 'conv.bias' in state_dict
            and not _has_key_under(state_dict,
                                   f'{prefix}{module.norm_name}.'))


def fuse_to_match(model: nn.Module, state_dict, prefix: str = '') -> List[str]:
    """Fuse every layer of ``model`` that ``state_dict`` holds in fused
    form, so that the checkpoint loads into it.

    A :class:`~mmfalcon.models.FusableLayer` is fused when the checkpoint has
    its ``fused`` child; an mmcv ``ConvModule`` has its BN folded when the
    checkpoint has a conv bias and no norm for it (what
    :func:`~mmfalcon.fuse_model` writes). Layers the checkpoint holds unfused
    are left as they are.

    Args:
        model (nn.Module): The model the checkpoint is loaded into.
        state_dict (Mapping[str, Tensor]): The checkpoint's weights.
        prefix (str): The key prefix of ``model`` in ``state_dict``.
            Defaults to ''.

    Returns:
        list[str]: The names of the layers fused, in model order.
    """
    fused = []
    # outer layers first: fusing one removes the layers inside it
    for name, module in list(model.named_modules()):
        if any(not outer or name.startswith(f'{outer}.') for outer in fused):
            continue
        key = f'{prefix}{name}.' if name else prefix
        if isinstance(module, FusableLayer):
            if not module.is_fused and _has_key_under(state_dict,
                                                      f'{key}{FUSED}.'):
                module.fuse()
                fused.append(name)
        elif _unfolded_conv_norm(module) and _holds_folded(
                state_dict, key, module):
            fold_conv_norm_children(module)
            fused.append(name)
    return fused


def _holds_fused_form(model: nn.Module, state_dict, prefix: str) -> bool:
    """Whether ``state_dict`` holds any layer of the (matched) ``model`` in
    fused form."""
    for name, module in model.named_modules():
        key = f'{prefix}{name}.' if name else prefix
        if isinstance(module, FusableLayer) and _has_key_under(
                state_dict, f'{key}{FUSED}.'):
            return True
        if (isinstance(module, ConvModule) and module.with_norm
                and not isinstance(module.norm, _BatchNorm)
                and _has_key_under(state_dict, key)):
            return True
    return False


def check_fused_match(model: nn.Module, state_dict, prefix: str = '',
                      what: str = 'the checkpoint') -> None:
    """Raise :class:`CheckpointMismatchError` when ``state_dict`` holds
    fused layers but does not match ``model`` exactly: a missing weight
    would leave a layer at its initial values (a BN at its defaults), an
    extra or reshaped one belongs to another model.

    Args:
        model (nn.Module): The model, already matched by
            :func:`fuse_to_match`.
        state_dict (Mapping[str, Tensor]): The checkpoint's weights.
        prefix (str): The key prefix of ``model`` in ``state_dict``.
        what (str): How the error names the checkpoint.
    """
    if not _holds_fused_form(model, state_dict, prefix):
        return
    expected = {prefix + key: value
                for key, value in model.state_dict().items()}
    given = {key: value for key, value in state_dict.items()
             if key.startswith(prefix)}
    problems = [f'missing {key}' for key in expected if key not in given]
    problems += [f'unexpected {key}' for key in given if key not in expected]
    problems += [
        f'{key}: {tuple(given[key].shape)} in the checkpoint, '
        f'{tuple(value.shape)} in the model'
        for key, value in expected.items()
        if key in given and hasattr(given[key], 'shape')
        and tuple(given[key].shape) != tuple(value.shape)
    ]
    if problems:
        raise CheckpointMismatchError(
            f'{what} holds a fused (deploy) model that does not match '
            f'{type(model).__name__} built from this config: '
            f'{len(problems)} difference(s), e.g. '
            + '; '.join(problems[:_SHOWN]) + '. Load it with the config it '
            'was fused from.')


def match_fused_checkpoint(model: nn.Module, state_dict,
                           prefix: str = '') -> None:
    """Fuse ``model`` to match ``state_dict`` (:func:`fuse_to_match`), log
    what was fused, and check the match (:func:`check_fused_match`)."""
    fused = fuse_to_match(model, state_dict, prefix)
    if fused:
        print_log(
            f'mmfalcon: the checkpoint holds {len(fused)} layer(s) of '
            f'{type(model).__name__} in fused (deploy) form; fused them to '
            f'match, e.g. {fused[0]!r}.', logger='current')
    check_fused_match(model, state_dict, prefix)


def _match_on_load(module, state_dict, prefix, *args) -> None:
    """A load pre-hook: :func:`match_fused_checkpoint` on ``module``."""
    match_fused_checkpoint(module, state_dict, prefix)


def add_match_on_load(module: nn.Module) -> None:
    """Make ``module`` match fused checkpoints when loaded (idempotent)."""
    hooks = module._load_state_dict_pre_hooks.values()
    if not any(getattr(hook, 'hook', hook) is _match_on_load
               for hook in hooks):
        module.register_load_state_dict_pre_hook(_match_on_load)


def _watch_backbone(parent: nn.Module, name: str, child: nn.Module) -> None:
    """Module registration hook: the module an mmfalcon backbone is attached
    to (a detector, a segmentor) matches fused checkpoints when loaded."""
    from .backbones.base import FusableBackbone
    if isinstance(child, FusableBackbone):
        add_match_on_load(parent)


nn.modules.module.register_module_module_registration_hook(_watch_backbone)
