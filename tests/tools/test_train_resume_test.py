"""End to end through the tools on a tiny generated dataset: train, resume,
fuse, test. Runs in a temporary directory so nothing touches data/."""
import os.path as osp
import re
import subprocess
import sys

import mmdet
import pytest
import torch
from conftest import ROOT, SINGLE_PROCESS_LOADERS, config_path

from mmfalcon.datasets import make_coco_shapes
from mmfalcon.engine import is_fused_checkpoint

CONFIG = config_path('demo/ssdlite_falcon_shapes.py')
SMALL = ['train_dataloader.batch_size=4', 'default_hooks.logger.interval=1',
         'default_hooks.checkpoint.interval=1'] + SINGLE_PROCESS_LOADERS


MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')


def run_tool(cwd, tool, *args, tools_dir=osp.join(ROOT, 'tools')):
    out = subprocess.run([sys.executable, osp.join(tools_dir, tool), *args],
                         cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('e2e')
    make_coco_shapes(str(root / 'data' / 'shapes_coco'), num_train=8,
                     num_val=4, seed=1)
    return str(root)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def test_train_resume_fuse_test(workspace):
    work = osp.join(workspace, 'work')
    run_tool(workspace, 'train.py', CONFIG, '--work-dir', work,
             '--cfg-options', 'train_cfg.max_epochs=1', *SMALL)
    first = load(osp.join(work, 'epoch_1.pth'))
    assert first['meta']['epoch'] == 1 and first['meta']['iter'] == 2

    log = run_tool(workspace, 'train.py', CONFIG, '--work-dir', work,
                   '--resume', '--cfg-options', 'train_cfg.max_epochs=2',
                   *SMALL)
    assert re.search(r'resumed epoch: 1, iter: 2', log), log[-2000:]
    second = load(osp.join(work, 'epoch_2.pth'))
    # the counters continue and the optimizer state was carried over
    assert second['meta']['epoch'] == 2 and second['meta']['iter'] == 4
    assert second['optimizer']['state']

    fused = osp.join(work, 'fused.pth')
    out = run_tool(workspace, 'reparameterize.py', CONFIG,
                   osp.join(work, 'epoch_2.pth'), fused)
    assert 'tools/test.py' in out
    assert is_fused_checkpoint(fused)
    ckpt = torch.load(fused, map_location='cpu', weights_only=True)
    assert ckpt['meta']['dataset_meta']['classes'] == [
        'circle', 'rectangle', 'triangle'
    ]

    for ckpt_path in (fused, osp.join(work, 'epoch_2.pth')):
        log = run_tool(workspace, 'test.py', CONFIG, ckpt_path,
                       '--work-dir', osp.join(work, 'test'))
        assert 'Re-parameterized the model' in log
        assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-2000:]


def test_parcnet_through_mmdet_tools_and_ours(workspace):
    """mmdet's own train.py / test.py run our config unchanged; our tools
    fuse ParC-Net and test it."""
    config = config_path('demo/ssdlite_parcnet_shapes.py')
    work = osp.join(workspace, 'work_parc')
    run_tool(workspace, 'train.py', config, '--work-dir', work,
             '--cfg-options', 'train_cfg.max_epochs=1', *SMALL,
             tools_dir=MMDET_TOOLS)
    ckpt = osp.join(work, 'epoch_1.pth')
    log = run_tool(workspace, 'test.py', config, ckpt, '--work-dir', work,
                   tools_dir=MMDET_TOOLS)
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-2000:]
    fused = osp.join(work, 'fused.pth')
    run_tool(workspace, 'reparameterize.py', config, ckpt, fused)
    log = run_tool(workspace, 'test.py', config, fused, '--work-dir', work)
    assert 'Re-parameterized the model' in log
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-2000:]


def test_test_tool_reports_missing_checkpoint(workspace):
    out = subprocess.run([
        sys.executable, osp.join(ROOT, 'tools', 'test.py'), CONFIG,
        'nope.pth'
    ], cwd=workspace, capture_output=True, text=True)
    assert out.returncode != 0
    assert 'checkpoint nope.pth: no such file' in out.stderr
