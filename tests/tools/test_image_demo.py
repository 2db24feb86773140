"""tools/demo/image_demo.py and the inference helpers behind it."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from mmfalcon.apis import dataset_meta, init_model, model_task
from mmfalcon.datasets.synthetic_shapes import render_scene

DEMO = 'demo/ssdlite_falcon_shapes.py'
SHAPES = ('circle', 'rectangle', 'triangle')


@pytest.mark.parametrize('name', ['demo/ssdlite_falcon_shapes.py',
                                  'demo/deeplabv3_falcon_shapes.py'])
def test_image_demo_writes_png(name, randomize_bn, tmp_path, config_path,
                               run_tool):
    config = config_path(name)
    image = str(tmp_path / 'scene.jpg')
    cv2.imwrite(image, render_scene(np.random.default_rng(0), 160, 224)[0])
    # a training-style checkpoint without meta: classes from the config
    model = randomize_bn(init_model(config, None, fuse=False))
    ckpt = str(tmp_path / 'random.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    out_file = str(tmp_path / 'out' / 'scene.png')
    run_tool('demo/image_demo.py', image, config, ckpt, '--out-file',
             out_file, '--score-thr', '0.1')
    drawing = cv2.imread(out_file)
    assert drawing is not None and drawing.shape == (160, 224, 3)


class _Stub(nn.Module):
    """Stands in for a built model: only ``cfg`` / ``dataset_meta``."""

    def __init__(self, cfg, meta=None):
        super().__init__()
        self.cfg = cfg
        if meta is not None:
            self.dataset_meta = meta


def test_dataset_meta_fallbacks(config_path):
    cfg = Config.fromfile(config_path(DEMO))
    ckpt_meta = dict(classes=('a', 'b'), palette=[(0, 0, 0), (1, 1, 1)])
    assert dataset_meta(_Stub(cfg, ckpt_meta)) == ckpt_meta
    assert tuple(dataset_meta(_Stub(cfg))['classes']) == SHAPES
    del cfg.test_dataloader.dataset.metainfo
    assert tuple(dataset_meta(_Stub(cfg))['classes']) == SHAPES  # top level
    cfg.pop('metainfo')  # -> CocoDataset.METAINFO
    meta = dataset_meta(_Stub(cfg))
    assert len(meta['classes']) == 80 and meta['classes'][0] == 'person'


def test_task_from_config(config_path):
    cfg = Config.fromfile(config_path(DEMO))
    assert model_task(_Stub(cfg)) == 'mmdet'
    cfg.default_scope = 'mmseg'
    assert model_task(_Stub(cfg)) == 'mmseg'
    cfg.default_scope = 'mmpretrain'
    with pytest.raises(ValueError, match="default_scope='mmpretrain'"):
        model_task(_Stub(cfg))
