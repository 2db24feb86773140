"""The commands the README promises, verbatim: ``python tools/train.py
configs/ssdlite_falcon_coco.py`` and ``python tools/test.py
configs/ssdlite_falcon_coco.py CKPT``, run where ``data/coco`` is missing
and where it holds a tiny COCO-layout set."""
import json
import os
import os.path as osp
import re

import pytest
from mmdet.datasets import CocoDataset

from mmfalcon.datasets import make_coco_shapes

CONFIG = 'ssdlite_falcon_coco.py'
NO_COCO = (
    "error: The {split} dataset's ann_file data/coco/annotations/"
    'instances_{coco_split}2017.json does not exist. To prepare the data, put '
    'annotations/, train2017/ and val2017/ under data/coco/ (or make '
    'data/coco a link to a folder holding them); docs/datasets.md has the '
    'steps.')


@pytest.mark.parametrize('tool, split, coco_split', [
    ('train.py', 'train', 'train'), ('test.py', 'test', 'val')])
def test_without_coco_the_commands_say_how_to_prepare_it(
        tool, split, coco_split, tmp_path, config_path, run_tool):
    (tmp_path / 'some.pth').touch()  # test.py first needs a checkpoint
    checkpoint = ['some.pth'] if tool == 'test.py' else []
    out = run_tool(tool, config_path(CONFIG), *checkpoint, cwd=tmp_path,
                   ok=False)
    assert out.stderr.strip() == NO_COCO.format(
        split=split, coco_split=coco_split), out.log[-2000:]
    assert not (tmp_path / 'work_dirs').exists()  # stopped before the runner


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    """A tiny set in COCO 2017's layout and with COCO's class names, under
    data/coco of a temporary directory."""
    root = tmp_path_factory.mktemp('coco_layout')
    shapes = root / 'shapes'
    make_coco_shapes(str(shapes), num_train=4, num_val=2, size=(96, 128),
                     seed=2)
    coco = root / 'data' / 'coco'
    os.makedirs(coco / 'annotations')
    names = CocoDataset.METAINFO['classes']
    for split in ('train', 'val'):
        os.rename(shapes / split, coco / f'{split}2017')
        with open(shapes / 'annotations' / f'instances_{split}.json') as f:
            ann = json.load(f)
        # the shapes' category ids 1, 2, 3 become COCO's first three
        ann['categories'] = [dict(id=i + 1, name=name)
                             for i, name in enumerate(names)]
        with open(coco / 'annotations' / f'instances_{split}2017.json',
                  'w') as f:
            json.dump(ann, f)
    return str(root)


@pytest.mark.slow
def test_promised_commands_train_and_test_with_fused_weights(
        coco_root, config_path, run_tool, single_process_loaders):
    config = config_path(CONFIG)
    small = ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=2',
             'train_dataloader.dataset.times=1'] + single_process_loaders
    log = run_tool('train.py', config, '--cfg-options', *small,
                   cwd=coco_root).log
    assert re.search(r'Epoch\(train\) \[1\]\[2/2\].*loss: [0-9.]+', log), \
        log[-2000:]
    work = osp.join(coco_root, 'work_dirs', 'ssdlite_falcon_coco')
    ckpt = osp.join(work, 'epoch_1.pth')
    # two iterations leave every score under the config's threshold
    log = run_tool('test.py', config, ckpt, '--cfg-options',
                   'model.test_cfg.score_thr=0.0', *single_process_loaders,
                   cwd=coco_root).log
    assert 'Re-parameterized the model' in log
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-2000:]
