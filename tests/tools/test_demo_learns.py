"""The demo recipe really learns: after a short training the COCO bbox mAP
is clearly above the untrained model's on the same images."""
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from mmfalcon.datasets import make_coco_shapes

NUM_EPOCHS = 50


@pytest.mark.slow
def test_trained_map_clearly_above_untrained(tmp_path, config_path):
    root = str(tmp_path / 'shapes')
    make_coco_shapes(root, num_train=16, num_val=1, seed=2)
    cfg = Config.fromfile(config_path('demo/ssdlite_falcon_shapes.py'))
    train_ann = osp.join(root, 'annotations', 'instances_train.json')
    for loader in ('train_dataloader', 'val_dataloader'):
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        dataset = cfg[loader].dataset
        # evaluate on the training images: "the same data" for both models
        dataset.update(data_root=root, ann_file=train_ann,
                       data_prefix=dict(img='train/'))
    cfg.train_dataloader.batch_size = 4
    cfg.val_evaluator.ann_file = train_ann
    cfg.train_cfg.update(max_epochs=NUM_EPOCHS, val_interval=NUM_EPOCHS)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
             end=10)
    ]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1)
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()
    before = runner.val()['coco/bbox_mAP']
    runner.train()
    after = runner.val()['coco/bbox_mAP']
    print(f'bbox mAP untrained {before:.3f} -> trained {after:.3f}')
    assert after > before + 0.1, (before, after)
