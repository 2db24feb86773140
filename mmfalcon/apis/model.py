from typing import Optional, Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint

from mmfalcon.engine.checkpoint import prepare_to_load
from mmfalcon.models import fuse_model


def init_model(config: Union[str, Config], checkpoint: Optional[str] = None,
               fuse: bool = True, device: str = 'cpu') -> nn.Module:
    """Build a model from a config and load a training or fused checkpoint.

    A fused checkpoint is loaded into a fused model; a training checkpoint
    into the training model, which is then fused when ``fuse`` is True.
    The checkpoint's ``dataset_meta`` (classes, palette) is attached.
    """
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if checkpoint is not None:
        prepare_to_load(model, checkpoint)
        ckpt = load_checkpoint(model, checkpoint, map_location='cpu')
        meta = ckpt.get('meta', {})
        if 'dataset_meta' in meta:
            model.dataset_meta = dict(meta['dataset_meta'])
    if fuse:
        fuse_model(model)
    model.cfg = cfg
    return model.to(device).eval()
