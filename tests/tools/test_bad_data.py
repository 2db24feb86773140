"""Bad input ends in one clear message naming what is wrong, not in a
traceback from deep inside mmengine or mmdet."""
import json
import os

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmfalcon.datasets import make_coco_shapes
from mmfalcon.engine.cli import DataError, check_datasets

DEMO = 'demo/ssdlite_falcon_shapes.py'
FIRST = 'data/shapes_coco/train/00000.jpg'


@pytest.fixture
def shapes(tmp_path, monkeypatch):
    """A tiny shapes set at the demo config's relative data_root."""
    make_coco_shapes(str(tmp_path / 'data' / 'shapes_coco'), num_train=8,
                     num_val=2, seed=1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cfg(config_path):
    cfg = Config.fromfile(config_path(DEMO))
    init_default_scope(cfg.default_scope)
    return cfg


def test_good_dataset_passes(shapes, cfg):
    check_datasets(cfg, ('train', 'val'))


def test_missing_image_is_named(shapes, cfg):
    os.remove(shapes / FIRST)
    with pytest.raises(DataError, match=f'train dataset .* names 1 file.* '
                       f'do not exist, e.g. {FIRST}'):
        check_datasets(cfg, ('train', ))


def test_missing_annotation_file_is_named(shapes, cfg):
    os.remove(shapes / 'data/shapes_coco/annotations/instances_val.json')
    with pytest.raises(DataError, match="val dataset's ann_file "
                       'data/shapes_coco/annotations/instances_val.json '
                       'does not exist'):
        check_datasets(cfg, ('train', 'val'))


def test_empty_dataset_is_named(shapes, cfg):
    ann = shapes / 'data/shapes_coco/annotations/instances_train.json'
    coco = json.loads(ann.read_text())
    coco.update(images=[], annotations=[])
    ann.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"train dataset \(type='CocoDataset'"
                       r".*instances_train.json.*has no samples"):
        check_datasets(cfg, ('train', 'val'))


@pytest.mark.slow
def test_corrupt_jpeg_in_training_is_named(shapes, config_path, run_tool,
                                           single_process_loaders):
    (shapes / FIRST).write_bytes(b'\xff\xd8\xff not a jpeg')
    out = run_tool('train.py', config_path(DEMO), '--work-dir', 'work',
                   '--cfg-options', 'train_cfg.max_epochs=1',
                   'train_dataloader.batch_size=4', *single_process_loaders,
                   cwd=shapes, ok=False)
    assert f'failed to load image: {FIRST}' in out.stderr, out.log[-2000:]


@pytest.mark.slow
def test_checkpoint_of_another_num_classes_names_the_shapes(
        shapes, config_path, run_tool, tmp_path):
    from mmfalcon.apis import init_model
    import torch
    config = config_path(DEMO)
    cfg = Config.fromfile(config)
    cfg.model.bbox_head.num_classes = 5
    ckpt = str(tmp_path / 'five.pth')
    torch.save(dict(state_dict=init_model(cfg, None, fuse=False)
                    .state_dict()), ckpt)
    out = run_tool('test.py', config, ckpt, '--work-dir', 'work',
                   cwd=shapes, ok=None)
    assert 'size mismatch for bbox_head.cls_convs.0' in out.log, \
        out.log[-3000:]
    assert 'torch.Size([24' in out.log  # (5 + 1) classes x 4 anchors
