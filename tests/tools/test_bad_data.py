"""Bad input ends in one clear message naming what is wrong, not in a
traceback from deep inside mmengine or mmdet; the checks reuse the datasets
the runner builds."""
import collections
import json
import os
import shutil

import pytest
from mmdet.datasets import CocoDataset
from mmengine.config import Config

from mmfalcon.datasets import make_coco_shapes
from mmfalcon.engine.cli import (DataError, build_runner, check_built_dataset,
                                 check_data_paths, check_datasets)

DEMO = 'demo/ssdlite_falcon_shapes.py'
FIRST = 'data/shapes_coco/train/00000.jpg'
ANNOTATIONS = 'data/shapes_coco/annotations'


@pytest.fixture
def shapes(tmp_path, monkeypatch):
    """A tiny shapes set at the demo config's relative data_root."""
    make_coco_shapes(str(tmp_path / 'data' / 'shapes_coco'), num_train=8,
                     num_val=2, seed=1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cfg(config_path, tmp_path):
    cfg = Config.fromfile(config_path(DEMO))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = tmp_path.name  # runners of two tests apart
    return cfg


def test_good_dataset_passes(shapes, cfg):
    check_data_paths(cfg, ('train', 'val'))
    check_datasets(build_runner(cfg), ('train', 'val'))


def test_each_annotation_file_is_parsed_once(shapes, cfg, monkeypatch):
    """The runner's train() trains on the datasets the check built: one
    parse of each annotation file in all."""
    parsed = collections.Counter()
    load_data_list = CocoDataset.load_data_list

    def counting(dataset):
        parsed[dataset.ann_file] += 1
        return load_data_list(dataset)

    monkeypatch.setattr(CocoDataset, 'load_data_list', counting)
    runner = build_runner(cfg)
    check_datasets(runner, ('train', 'val'))
    runner.train_loop.run = lambda: runner.model  # all but the training
    runner.train()
    assert parsed == {f'{ANNOTATIONS}/instances_train.json': 1,
                      f'{ANNOTATIONS}/instances_val.json': 1}


def test_sample_files_are_listed_once_per_folder(shapes, cfg, monkeypatch):
    """No stat per sample: one listing of the image folder."""
    dataset = build_runner(cfg).train_dataloader.dataset
    listed, stats = [], []
    listdir, stat = os.listdir, os.stat
    with monkeypatch.context() as patch:
        patch.setattr(os, 'listdir',
                      lambda path: listed.append(path) or listdir(path))
        patch.setattr(os, 'stat', lambda path, *args, **kwargs: stats.append(
            path) or stat(path, *args, **kwargs))
        check_built_dataset(dataset, 'train')
    assert listed == ['data/shapes_coco/train/']
    assert stats == []


def test_missing_image_is_named(shapes, cfg):
    os.remove(shapes / FIRST)
    with pytest.raises(DataError, match=f'train dataset .* names 1 file.* '
                       f'do not exist, e.g. {FIRST}'):
        check_datasets(build_runner(cfg), ('train', ))


def test_missing_annotation_file_is_named(shapes, cfg):
    os.remove(shapes / ANNOTATIONS / 'instances_val.json')
    with pytest.raises(DataError) as error:
        check_data_paths(cfg, ('train', 'val'))
    assert str(error.value) == (
        f"The val dataset's ann_file {ANNOTATIONS}/instances_val.json does "
        'not exist. To prepare the data, put annotations/, train/ and val/ '
        'under data/shapes_coco/ (or make data/shapes_coco a link to a '
        'folder holding them); docs/datasets.md has the steps.')


def test_missing_image_folder_is_named(shapes, cfg):
    shutil.rmtree(shapes / 'data/shapes_coco/train')
    with pytest.raises(DataError, match="train dataset's img folder "
                       'data/shapes_coco/train/ does not exist. To prepare'):
        check_data_paths(cfg, ('train', 'val'))


def test_empty_dataset_is_named(shapes, cfg):
    ann = shapes / ANNOTATIONS / 'instances_train.json'
    coco = json.loads(ann.read_text())
    coco.update(images=[], annotations=[])
    ann.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"train dataset \(CocoDataset, "
                       rf"ann_file='{ANNOTATIONS}/instances_train.json'\) "
                       'has no samples'):
        check_datasets(build_runner(cfg), ('train', 'val'))


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
