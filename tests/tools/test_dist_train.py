"""tools/dist_train.sh on CPU: two gloo processes (the config's nccl
becomes gloo, its SyncBN the SyncBN that runs on CPU processes, see
mmfalcon.engine.cli), on tiny generated datasets in a temporary
directory."""
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from mmcv.cnn import build_norm_layer
from mmengine.registry import DefaultScope

from mmfalcon.apis import init_model
from mmfalcon.datasets import make_coco_shapes, make_voc_shapes
from mmfalcon.engine.cli import _replace_sync_bn
from mmfalcon.fileio import load_checkpoint_file
from mmfalcon.models.layers.batch_stats import CPUSyncBatchNorm

DEMO = 'demo/ssdlite_falcon_shapes.py'
SEG_DEMO = 'demo/deeplabv3_falcon_shapes.py'


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_dist_train_two_cpu_processes(tmp_path, repo_root, config_path,
                                      single_process_loaders):
    config = config_path(DEMO)
    make_coco_shapes(str(tmp_path / 'data' / 'shapes_coco'), num_train=8,
                     num_val=2, seed=1)
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
               OMP_NUM_THREADS='1')
    out = subprocess.run([
        'bash', osp.join(repo_root, 'tools', 'dist_train.sh'), config, '2',
        '--work-dir', 'work', '--cfg-options', 'train_cfg.max_epochs=1',
        'train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
        *single_process_loaders,
        'model.backbone.norm_cfg.type=SyncBN'
    ], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    # both ranks exit cleanly (no abort at exit, see engine.cli.run)
    assert out.returncode == 0, log[-4000:]
    # both ranks applied the CPU fallback, then trained as one job
    assert log.count('distributed backend nccl -> gloo') == 2, log[-4000:]
    assert log.count('SyncBN setting(s) of the model -> mmfalcon.CPUSyncBN'
                     ' (synchronised across the CPU processes)') == 2
    assert re.search(r'Distributed training: True', log)
    # 8 images, 2 per process and step, 2 processes: 2 iterations
    assert re.search(r'Epoch\(train\) \[1\]\[2/2\]', log), log[-4000:]

    ckpt = str(tmp_path / 'work' / 'epoch_1.pth')
    state = load_checkpoint_file(ckpt)['state_dict']
    model = init_model(config, ckpt, fuse=False)
    loaded = model.state_dict()
    assert set(loaded) == set(state)  # no "module." prefix, nothing missing
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert init_model(config, ckpt).dataset_meta['classes'] == (
        'circle', 'rectangle', 'triangle')

    env['PORT'] = str(free_port())
    out = subprocess.run([
        'bash', osp.join(repo_root, 'tools', 'dist_test.sh'), config, ckpt,
        '2', '--work-dir', 'work', '--cfg-options', *single_process_loaders
    ], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-4000:]


@pytest.mark.slow
def test_dist_train_segmentation_folded_under_sync_bn(tmp_path, repo_root,
                                                      config_path,
                                                      single_process_loaders):
    """DeepLabV3-FalconNet keeps its SyncBN on 2 CPU processes and trains
    FalconNet folded, with the statistics of both processes."""
    make_voc_shapes(str(tmp_path / 'data' / 'shapes_voc'), num_train=4,
                    num_val=2, size=(64, 64), seed=1)
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
               OMP_NUM_THREADS='1')
    out = subprocess.run([
        'bash', osp.join(repo_root, 'tools', 'dist_train.sh'),
        config_path(SEG_DEMO), '2', '--work-dir', 'work', '--cfg-options',
        'train_cfg.max_iters=2', 'train_cfg.val_interval=100',
        'train_dataloader.batch_size=1', 'default_hooks.logger.interval=1',
        'model.data_preprocessor.size=[64,64]', *single_process_loaders
    ], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    # backbone, decode and auxiliary heads: SyncBN kept, synchronised
    assert re.search(r'CUDA is unavailable: [3-9] SyncBN setting\(s\) of the '
                     r'model -> mmfalcon.CPUSyncBN \(synchronised', log), \
        log[-4000:]
    assert 'not synchronised' not in log
    folded = re.findall(r'FalconNet trains (\d+) of (\d+) re-parameterizable'
                        r' layers folded by batch statistics; SyncBN on (\d+)'
                        r' of them: statistics all-reduced over 2 processes\.',
                        log)
    assert folded and all(len(set(counts)) == 1 for counts in folded), \
        log[-4000:]
    assert re.search(r'Iter\(train\) \[2/2\]', log), log[-4000:]


def test_replace_sync_bn_anywhere_in_a_model_config(config_path):
    cfg = Config.fromfile(config_path(DEMO))
    cfg.model.backbone.norm_cfg.type = 'SyncBN'
    cfg.model.neck.norm_cfg = dict(type='mmdet.MMSyncBN', eps=1e-3)
    assert _replace_sync_bn(cfg.model) == 2
    assert cfg.model.backbone.norm_cfg.type == 'mmfalcon.CPUSyncBN'
    assert cfg.model.neck.norm_cfg == dict(type='mmfalcon.CPUSyncBN',
                                           eps=1e-3)
    assert _replace_sync_bn(cfg.model) == 0
    # mmcv builds it from a downstream scope, as the heads' ConvModules do
    with DefaultScope.overwrite_default_scope('mmdet'):
        norm = build_norm_layer(cfg.model.neck.norm_cfg, 8)[1]
    assert type(norm) is CPUSyncBatchNorm and norm.eps == 1e-3
