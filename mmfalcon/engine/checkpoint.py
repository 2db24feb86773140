"""Fused (deploy) checkpoints: plain state_dict + metadata, weights-only."""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import is_model_wrapper

from mmfalcon.version import __version__
from mmfalcon.models import fuse_model, is_fused

FUSED_META_KEY = 'mmfalcon_fused'


def _plain(value):
    """Turn metadata into types ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def save_fused_checkpoint(model: nn.Module, path: str,
                          meta: Optional[dict] = None) -> None:
    """Save a fused model as ``{'state_dict', 'meta'}``.

    Raises:
        ValueError: if ``model`` has unfused re-parameterizable layers.
    """
    if is_model_wrapper(model):
        model = model.module
    if not is_fused(model):
        raise ValueError('save_fused_checkpoint expects a fused model; call '
                         'mmfalcon.fuse_model(model) first.')
    meta = dict(_plain(meta or {}), mmfalcon_version=__version__)
    meta[FUSED_META_KEY] = True
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(dict(state_dict=state_dict, meta=meta), path)


def is_fused_checkpoint(path: str) -> bool:
    """True when ``path`` was written by :func:`save_fused_checkpoint`.

    Training checkpoints pickle objects that the weights-only loader
    refuses, which already tells them apart; nothing untrusted is unpickled.
    """
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal means "not ours"
        return False
    return isinstance(ckpt, dict) and bool(
        ckpt.get('meta', {}).get(FUSED_META_KEY))


def prepare_to_load(model: nn.Module, path: str) -> bool:
    """Fuse ``model`` when ``path`` is a fused checkpoint, which has no
    training branches to load into. Returns whether it fused."""
    if not is_fused_checkpoint(path):
        return False
    if is_model_wrapper(model):
        model = model.module
    fuse_model(model)
    return True
