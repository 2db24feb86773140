"""Single-image inference and drawing for detectors and segmentors.

The task comes from the model's config (``default_scope``), or failing
that from the model's class: mmdet's ``inference_detector`` and
``DetLocalVisualizer`` for detectors, mmseg's ``inference_model`` and
``SegLocalVisualizer`` for segmentors.
"""
from importlib import import_module
from typing import Optional

import mmcv
import numpy as np
import torch.nn as nn
from mmengine.registry import init_default_scope

TASKS = ('mmdet', 'mmseg')


def model_task(model: nn.Module) -> str:
    """``'mmdet'`` or ``'mmseg'`` for a model built by
    :func:`mmfalcon.apis.init_model`.

    Args:
        model (nn.Module): The model; its ``cfg.default_scope`` decides,
            else whether it is an mmdet ``BaseDetector`` or an mmseg
            ``BaseSegmentor``.
    """
    cfg = getattr(model, 'cfg', None)
    scope = cfg.get('default_scope') if cfg is not None else None
    if scope in TASKS:
        return scope
    if scope is None:
        from mmdet.models.detectors import BaseDetector
        from mmseg.models.segmentors import BaseSegmentor
        if isinstance(model, BaseDetector):
            return 'mmdet'
        if isinstance(model, BaseSegmentor):
            return 'mmseg'
    raise ValueError(
        f'cannot tell the task of {type(model).__name__} (config '
        f'default_scope={scope!r}); expected one of {TASKS} or an mmdet '
        f'detector / mmseg segmentor')


def _dataset_cfg(cfg):
    dataset = (cfg.get('test_dataloader') or {}).get('dataset')
    while dataset is not None and 'dataset' in dataset and \
            'metainfo' not in dataset:
        dataset = dataset['dataset']
    return dataset


def dataset_meta(model: nn.Module) -> dict:
    """Class names and palette for drawing, from the first source that has
    them: ``model.dataset_meta`` (the checkpoint's), the config's test set
    ``metainfo`` (or top-level ``metainfo``), the test dataset class's
    ``METAINFO``.

    Args:
        model (nn.Module): A model built by
            :func:`mmfalcon.apis.init_model` (with ``cfg``).
    """
    meta = getattr(model, 'dataset_meta', None)
    if meta and meta.get('classes'):
        return dict(meta)
    cfg = getattr(model, 'cfg', None)
    if cfg is None:
        return {}
    dataset = _dataset_cfg(cfg) or {}
    meta = dataset.get('metainfo') or cfg.get('metainfo')
    if meta and meta.get('classes'):
        return dict(meta)
    if 'type' in dataset:
        registry = import_module(f'{model_task(model)}.registry')
        dataset_cls = registry.DATASETS.get(dataset['type'])
        if dataset_cls is not None:
            return dict(getattr(dataset_cls, 'METAINFO', {}))
    return {}


def inference(model: nn.Module, image: str):
    """Run the test pipeline and the model on one image.

    Args:
        model (nn.Module): A detector or segmentor built by
            :func:`mmfalcon.apis.init_model` (fused or not).
        image (str): Image file path.

    Returns:
        DetDataSample | SegDataSample: The prediction.
    """
    task = model_task(model)
    init_default_scope(task)
    if task == 'mmdet':
        from mmdet.apis import inference_detector
        return inference_detector(model, image)
    from mmseg.apis import inference_model
    model.cfg = model.cfg.copy()  # mmseg edits cfg.test_pipeline in place
    return inference_model(model, image)


def draw_result(model: nn.Module, image: str, result,
                out_file: Optional[str] = None,
                score_thr: float = 0.3) -> np.ndarray:
    """Draw a prediction on its image and optionally write it to a file.

    Args:
        model (nn.Module): The model that made the prediction (for the
            task and :func:`dataset_meta`).
        image (str): Image file path.
        result (DetDataSample | SegDataSample): From :func:`inference`.
        out_file (str | None): Where to write the drawing (e.g. a PNG);
            None writes nothing. Defaults to None.
        score_thr (float): Detections below this score are not drawn
            (detection only). Defaults to 0.3.

    Returns:
        np.ndarray: The drawing, RGB.
    """
    task = model_task(model)
    img = mmcv.imconvert(mmcv.imread(image), 'bgr', 'rgb')
    if task == 'mmdet':
        from mmdet.visualization import DetLocalVisualizer
        visualizer = DetLocalVisualizer()
        extra = dict(pred_score_thr=score_thr)
    else:
        from mmseg.visualization import SegLocalVisualizer
        visualizer = SegLocalVisualizer()
        extra = {}
    visualizer.dataset_meta = dataset_meta(model)
    visualizer.add_datasample(
        'result', img, data_sample=result, draw_gt=False, show=False,
        out_file=out_file, **extra)
    return visualizer.get_image()
