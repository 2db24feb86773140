"""Fused (deploy) checkpoints: plain state_dict + metadata, weights-only;
which checkpoint ``--resume`` continues from."""
import glob
import logging
import os.path as osp
from typing import Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mmfalcon.fileio import (CheckpointError, checkpoint_is_complete,
                             load_checkpoint_file)
from mmfalcon.models import fuse_model, is_fused
from mmfalcon.version import __version__

FUSED_META_KEY = 'mmfalcon_fused'


def _plain(value):
    """Turn metadata into types ``torch.load(weights_only=True)`` accepts,
    keeping tuples tuples (mmengine's visualizers take a palette of color
    tuples, not lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, 'item') and getattr(value, 'ndim', None) == 0:
        return _plain(value.item())  # a numpy / torch scalar
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

    Loads through :func:`mmfalcon.fileio.load_checkpoint_file`, so a file
    that is refused or truncated raises its error here.
    """
    ckpt = load_checkpoint_file(path, map_location='cpu')
    return _fused_meta(ckpt) is not None


def _fused_meta(ckpt) -> Optional[dict]:
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    return meta if isinstance(meta, dict) and meta.get(FUSED_META_KEY) \
        else None


def check_trainable(path: str, resume: bool,
                    model: Optional[nn.Module] = None) -> None:
    """Refuse to train from a fused checkpoint, which has neither the
    training branches nor the optimizer state and counters to continue,
    and to resume ``model`` from a checkpoint whose weights have other
    shapes (mmengine would load it loosely, then fail deep inside the
    optimizer)."""
    ckpt = load_checkpoint_file(path, map_location='cpu')
    meta = _fused_meta(ckpt)
    if meta is not None:
        source = meta.get('source_checkpoint')
        raise CheckpointError(
            f'{path} is a fused checkpoint: it holds only the deploy-time '
            f'weights, without training branches, optimizer state or '
            f'iteration count, so training cannot '
            f'{"resume" if resume else "start"} from it. Use the training '
            f'checkpoint it was fused from'
            + (f' ({source})' if source else '') + '.')
    if not resume or model is None:
        return
    if is_model_wrapper(model):
        model = model.module
    saved = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    expected = model.state_dict()
    mismatched = [
        f'{key}: {tuple(saved[key].shape)} in the checkpoint, '
        f'{tuple(value.shape)} in the model'
        for key, value in expected.items()
        if key in saved and hasattr(saved[key], 'shape')
        and saved[key].shape != value.shape
    ]
    if mismatched:
        raise CheckpointError(
            f'cannot resume from {path}: {len(mismatched)} weight(s) have '
            f'other shapes than the config\'s model, e.g. '
            + '; '.join(mismatched[:3]) + '. Resume with the config it was '
            'trained with, or start a new run with load_from.')


def find_resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` without a path continues from.

    mmengine takes the file named in ``work_dir/last_checkpoint``. A crash
    while saving can leave that file or the newest checkpoint cut off, so
    this returns the first complete one of: the named file, then the
    work dir's ``epoch_*.pth`` / ``iter_*.pth``, newest first. Each
    incomplete one is logged and skipped; None when none is complete.
    """
    candidates = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            candidates.append(f.read().strip())
    candidates += sorted(
        glob.glob(osp.join(work_dir, 'epoch_*.pth')) +
        glob.glob(osp.join(work_dir, 'iter_*.pth')),
        key=osp.getmtime, reverse=True)
    seen = set()
    for path in candidates:
        if not path or path in seen or not osp.isfile(path):
            continue
        seen.add(path)
        if checkpoint_is_complete(path):
            return path
        print_log(f'--resume: skipped {path}, which is not a complete '
                  f'checkpoint (cut off by a crash while saving?).',
                  logger='current', level=logging.WARNING)
    return None


def prepare_to_load(model: nn.Module, path: str) -> bool:
    """Fuse ``model`` when ``path`` is a fused checkpoint, which has no
    training branches to load into. Returns whether it fused."""
    if not is_fused_checkpoint(path):
        return False
    if is_model_wrapper(model):
        model = model.module
    fuse_model(model)
    return True
