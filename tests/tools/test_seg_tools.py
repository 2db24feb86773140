"""Segmentation through the same tools and fusion path as detection: the
demo recipe learns (mIoU clearly above the untrained model's), a training
checkpoint goes through fuse.py and test.py, and mmseg's own
tools run the config."""
import os.path as osp
import re

import mmseg
import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from mmfalcon.datasets import make_voc_shapes
from mmfalcon.engine import is_fused_checkpoint

MAX_ITERS = 60


def small_cfg(config, root, work_dir):
    cfg = Config.fromfile(config)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        # evaluate on the training images: "the same data" for both models
        cfg[loader].dataset.update(data_root=root,
                                   ann_file='ImageSets/Segmentation/train.txt')
    cfg.train_dataloader.batch_size = 4
    cfg.train_cfg.update(max_iters=MAX_ITERS, val_interval=MAX_ITERS)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
             end=10)
    ]
    cfg.default_hooks.checkpoint.interval = MAX_ITERS
    cfg.default_hooks.logger.interval = 10
    cfg.work_dir = work_dir
    return cfg


@pytest.mark.slow
def test_seg_demo_learns_then_fuses_and_tests(tmp_path, config_path,
                                              run_tool):
    root = make_voc_shapes(str(tmp_path / 'shapes_voc'), num_train=8,
                           num_val=1, size=(128, 160), seed=3)
    work = str(tmp_path / 'work')
    cfg = small_cfg(config_path('demo/deeplabv3_falcon_shapes.py'), root,
                    work)
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()
    before = runner.val()['mIoU']
    runner.train()
    after = runner.val()['mIoU']
    print(f'mIoU untrained {before:.2f} -> trained {after:.2f}')
    assert after > before + 15, (before, after)  # mIoU is in percent

    # outside the work dirs: a runner dumps its own config there
    small = str(tmp_path / 'small.py')
    cfg.dump(small)
    ckpt = osp.join(work, f'iter_{MAX_ITERS}.pth')
    fused = osp.join(work, 'fused.pth')
    run_tool('fuse.py', small, ckpt, fused)
    log = run_tool('test.py', small, fused, '--work-dir', work).log
    assert is_fused_checkpoint(fused)
    assert 'Re-parameterized the model' in log
    tested = float(re.findall(r'mIoU: ([0-9.]+)', log)[-1])
    # the fused model scores what the unfused one did
    assert abs(tested - after) < 0.5, (tested, after)

    # mmseg's own tools run the config unchanged (custom_imports only)
    mmseg_tools = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools')
    mmseg_work = osp.join(work, 'mmseg')
    run_tool('train.py', small, '--work-dir', mmseg_work, '--cfg-options',
             'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2',
             tools_dir=mmseg_tools)
    out = run_tool('test.py', small, osp.join(mmseg_work, 'iter_2.pth'),
                   '--work-dir', mmseg_work, tools_dir=mmseg_tools)
    assert re.search(r'mIoU: [0-9.]+', out.log)
    # and take the fused checkpoint, scoring what our test.py scored
    log = run_tool('test.py', small, fused, '--work-dir', mmseg_work,
                   tools_dir=mmseg_tools).log
    assert 'in fused (deploy) form; fused them to match' in log
    assert float(re.findall(r'mIoU: ([0-9.]+)', log)[-1]) == tested
