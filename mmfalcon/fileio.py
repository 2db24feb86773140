"""Checkpoint loading: the one loader every checkpoint load goes through.

Imported by ``mmfalcon``; it registers itself as mmengine's loader of local
files, so ``load_from``, ``--resume`` and ``init_cfg=dict(type='Pretrained')``
use it too.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_local_checkpoint(filename, map_location=None):
    """mmengine's local loader, without torch's ``weights_only`` default."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location,
                      weights_only=False)


CheckpointLoader.register_scheme(
    prefixes='', loader=load_local_checkpoint, force=True)
