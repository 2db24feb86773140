"""The tensor forward of a detector or segmentor, as exporters see it.

Shared by the ONNX exporter and the complexity analysis: both need the
network without data preprocessing and post-processing, as a module that
maps one image tensor to a flat tuple of named tensors.
"""
from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config

DEFAULT_INPUT_SIZE = (320, 320)

# Output groups of a dense detection head's forward, in order
# (``(cls_scores, bbox_preds)`` for anchor heads such as SSD's).
_DET_GROUPS = ('cls_score', 'bbox_pred')


def _flatten(outputs: Any) -> List[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in _flatten(item)]
    raise TypeError(f'the tensor forward returned a {type(outputs).__name__}'
                    f'; expected tensors in (nested) lists / tuples')


def _names(model: nn.Module, outputs: Any) -> List[str]:
    """One name per flattened output (see :class:`TensorForward`)."""
    if isinstance(outputs, torch.Tensor):
        return ['seg_logits' if hasattr(model, 'decode_head') else 'output']
    names = []
    for g, group in enumerate(outputs):
        known = hasattr(model, 'bbox_head') and g < len(_DET_GROUPS)
        prefix = _DET_GROUPS[g] if known else f'output{g}'
        if isinstance(group, torch.Tensor):
            names.append(prefix)
        else:
            names += [f'{prefix}_{i}' for i in range(len(_flatten(group)))]
    return names


class TensorForward(nn.Module):
    """``model._forward(x)`` (mmdet / mmseg tensor mode) as a flat tuple.

    A detector's ``(cls_scores, bbox_preds)`` per feature level become
    ``cls_score_0, ..., bbox_pred_0, ...``; a segmentor's logits become
    ``seg_logits``; other outputs ``output{group}_{index}``. The names
    are known after one call (:meth:`output_names`).

    Args:
        model (nn.Module): A model with a ``_forward(inputs)`` method
            (mmdet ``BaseDetector``, mmseg ``BaseSegmentor``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not callable(getattr(model, '_forward', None)):
            raise TypeError(f'{type(model).__name__} has no _forward(inputs)'
                            f'; expected an mmdet detector or an mmseg '
                            f'segmentor')
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(_flatten(self.model._forward(x)))

    @torch.no_grad()
    def output_names(self, x: torch.Tensor) -> List[str]:
        """Names of the outputs for input ``x`` (runs the model once)."""
        return _names(self.model, self.model._forward(x))


def _find_pipeline(dataset_cfg):
    if dataset_cfg is None:
        return None
    if 'pipeline' in dataset_cfg:
        return dataset_cfg['pipeline']
    if 'dataset' in dataset_cfg:
        return _find_pipeline(dataset_cfg['dataset'])
    if dataset_cfg.get('datasets'):
        return _find_pipeline(dataset_cfg['datasets'][0])
    return None


def input_size_from_config(cfg: Config,
                           default: Sequence[int] = DEFAULT_INPUT_SIZE
                           ) -> Tuple[int, int]:
    """The fixed ``(H, W)`` the test pipeline resizes images to.

    Read from a ``Resize`` with ``keep_ratio=False`` in the test dataset's
    pipeline (or ``cfg.test_pipeline``); else the data preprocessor's
    ``size`` (mmseg's training crop size); else ``default``.

    Args:
        cfg (Config): A model config.
        default (Sequence[int]): ``(H, W)`` to fall back to.
            Defaults to ``(320, 320)``.
    """
    loader = cfg.get('test_dataloader') or {}
    pipeline = _find_pipeline(loader.get('dataset')) or cfg.get(
        'test_pipeline') or []
    for transform in pipeline:
        kind = str(transform.get('type', '')).split('.')[-1]
        if kind == 'Resize' and not transform.get('keep_ratio', False):
            scale = transform.get('scale')
            if isinstance(scale, int):
                return scale, scale
            if isinstance(scale, (list, tuple)) and len(scale) == 2:
                return int(scale[1]), int(scale[0])  # mmcv scale is (w, h)
    size = ((cfg.get('model') or {}).get('data_preprocessor') or {}).get(
        'size')
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])  # mmseg's size is (h, w)
    return tuple(default)
