"""Compatibility fixes for the pinned OpenMMLab stack, applied on import.

(a) torch >= 2.6 loads with ``weights_only=True`` by default, which cannot
    read mmengine 0.10.7 training checkpoints (they pickle message hubs and
    numpy objects). Local checkpoints loaded *through mmengine* are read
    with ``weights_only=False``, as mmengine did before torch 2.6; plain
    ``torch.load`` calls elsewhere keep torch's safe default.
(b) mmdet 3.3.0's ``SSDHead`` skips ``AnchorHead.__init__`` and never sets
    ``loss_cls``, which ``BaseDenseHead._predict_by_feat_single`` reads, so
    SSD cannot predict (mmdet#11063, #11305, #11780). Our configs use
    :class:`PredictableSSDHead` instead.
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

try:
    from mmdet.models.dense_heads import SSDHead
    from mmdet.registry import MODELS as MMDET_MODELS
except ImportError:  # mmdet is optional for segmentation-only users
    SSDHead = None

if SSDHead is not None:

    @MMDET_MODELS.register_module()
    class PredictableSSDHead(SSDHead):
        """mmdet's ``SSDHead`` that can run prediction (see module doc).

        SSD computes its classification loss itself, so there is no
        ``loss_cls`` module; ``None`` tells the shared prediction code to
        use the plain softmax of ``use_sigmoid_cls=False``.
        """
        loss_cls = None
