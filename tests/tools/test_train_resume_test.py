"""End to end through the tools on a tiny generated dataset: train, resume,
fuse, and every tool on the fused checkpoint tools/fuse.py wrote; a run
killed mid-training resumes; a truncated checkpoint is never resumed from.
Runs in a temporary directory so nothing touches data/."""
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import cv2
import mmdet
import numpy as np
import pytest
import torch

from mmfalcon.datasets import make_coco_shapes
from mmfalcon.datasets.synthetic_shapes import render_scene
from mmfalcon.engine import is_fused_checkpoint
from mmfalcon.fileio import load_checkpoint_file

pytestmark = pytest.mark.slow

MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')
# 8 training images, batch 4: 2 iterations an epoch
ITERS_PER_EPOCH = 2


@pytest.fixture(scope='module')
def config(config_path):
    return config_path('demo/ssdlite_falcon_shapes.py')


@pytest.fixture(scope='module')
def small(single_process_loaders):
    return ['train_dataloader.batch_size=4', 'default_hooks.logger.interval=1',
            'default_hooks.checkpoint.interval=1'] + single_process_loaders


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('e2e')
    make_coco_shapes(str(root / 'data' / 'shapes_coco'), num_train=8,
                     num_val=4, seed=1)
    return str(root)


@pytest.fixture(scope='module')
def trained(workspace, config, small, run_tool):
    """A 2-epoch run (1 epoch, then resumed) and its fused checkpoint, as
    tools/fuse.py writes it."""
    work = osp.join(workspace, 'work')
    run_tool('train.py', config, '--work-dir', work, '--cfg-options',
             'train_cfg.max_epochs=1', *small, cwd=workspace)
    first = load_checkpoint_file(osp.join(work, 'epoch_1.pth'))
    assert first['meta']['epoch'] == 1
    assert first['meta']['iter'] == ITERS_PER_EPOCH
    resumed = run_tool('train.py', config, '--work-dir', work, '--resume',
                       '--cfg-options', 'train_cfg.max_epochs=2', *small,
                       cwd=workspace)
    assert re.search(r'resumed epoch: 1, iter: 2', resumed.log), \
        resumed.log[-2000:]
    fused = osp.join(work, 'fused.pth')
    out = run_tool('fuse.py', config, osp.join(work, 'epoch_2.pth'), fused,
                   cwd=workspace)
    assert 'tools/test.py' in out.log
    return work, fused


def test_resume_continues_the_counters(trained):
    work, _ = trained
    second = load_checkpoint_file(osp.join(work, 'epoch_2.pth'))
    # the counters continue and the optimizer state was carried over
    assert second['meta']['epoch'] == 2
    assert second['meta']['iter'] == 2 * ITERS_PER_EPOCH
    assert second['optimizer']['state']


def test_fused_checkpoint_is_plain_and_portable(trained):
    _, fused = trained
    assert is_fused_checkpoint(fused)
    meta = torch.load(fused, map_location='cpu', weights_only=True)['meta']
    assert meta['dataset_meta']['classes'] == ('circle', 'rectangle',
                                               'triangle')
    palette = meta['dataset_meta']['palette']
    assert palette and all(type(color) is tuple for color in palette)
    # file names, no local paths
    assert meta['config'] == 'ssdlite_falcon_shapes.py'
    assert meta['source_checkpoint'] == 'epoch_2.pth'


def test_test_tool_on_fused_and_training_checkpoints(trained, workspace,
                                                     config, run_tool):
    work, fused = trained
    for ckpt in (fused, osp.join(work, 'epoch_2.pth')):
        log = run_tool('test.py', config, ckpt, '--work-dir',
                       osp.join(work, 'test'), cwd=workspace).log
        assert 'Re-parameterized the model' in log
        assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-2000:]


def test_mmdet_test_tool_on_fused_and_training_checkpoints(
        trained, workspace, config, run_tool):
    """mmdet's own tools/test.py takes the fused checkpoint with the config
    unchanged (the model fuses to match it) and scores what the training
    checkpoint scores."""
    work, fused = trained
    logs = [
        run_tool('test.py', config, ckpt, '--work-dir',
                 osp.join(work, 'mmdet_test'), tools_dir=MMDET_TOOLS,
                 cwd=workspace).log
        for ckpt in (fused, osp.join(work, 'epoch_2.pth'))
    ]
    assert 'in fused (deploy) form; fused them to match' in logs[0]
    fused_scores, training_scores = (
        re.findall(r'coco/bbox_mAP: (-?[0-9.]+)', log) for log in logs)
    assert fused_scores and fused_scores == training_scores, (
        fused_scores, training_scores)


def test_image_demo_on_the_fused_checkpoint(trained, tmp_path, config,
                                            run_tool):
    _, fused = trained
    image = str(tmp_path / 'scene.jpg')
    cv2.imwrite(image, render_scene(np.random.default_rng(0), 160, 224)[0])
    out_file = str(tmp_path / 'scene.png')
    run_tool('demo/image_demo.py', image, config, fused, '--out-file',
             out_file, '--score-thr', '0.0')
    drawing = cv2.imread(out_file)
    assert drawing is not None and drawing.shape == (160, 224, 3)


def test_onnx_export_of_the_fused_checkpoint(trained, tmp_path, config,
                                             run_tool):
    _, fused = trained
    out = run_tool('deployment/export_onnx.py', config, fused,
                   str(tmp_path / 'model.onnx'), '--shape', '96', '128')
    assert 'relative error onnxruntime vs PyTorch' in out.stdout


def test_training_from_the_fused_checkpoint_is_refused(
        trained, workspace, config, small, run_tool):
    work, fused = trained
    for how in (['--resume', fused],
                ['--cfg-options', f'load_from={fused}']):
        out = run_tool('train.py', config, '--work-dir',
                       osp.join(work, 'refused'), *how, cwd=workspace,
                       ok=False)
        assert f'{fused} is a fused checkpoint' in out.stderr, out.log[-2000:]
        assert 'epoch_2.pth' in out.stderr
        assert 'Traceback' not in out.stderr


def test_resume_skips_a_truncated_checkpoint(trained, workspace, config,
                                             small, run_tool):
    """A crash while saving epoch 3 left it cut off (and named in
    last_checkpoint): --resume continues from epoch 2, and naming the cut
    file is a clear error."""
    work, _ = trained
    whole = osp.join(work, 'epoch_2.pth')
    cut = osp.join(work, 'epoch_3.pth')
    with open(whole, 'rb') as src, open(cut, 'wb') as dst:
        dst.write(src.read()[:osp.getsize(whole) // 2])
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(cut)
    out = run_tool('train.py', config, '--work-dir', work, '--resume', cut,
                   cwd=workspace, ok=False)
    assert f'{cut} is not a complete checkpoint' in out.stderr, out.log[-2000:]
    assert 'Traceback' not in out.stderr
    log = run_tool('train.py', config, '--work-dir', work, '--resume',
                   '--cfg-options', 'train_cfg.max_epochs=3', *small,
                   cwd=workspace).log
    assert f'skipped {cut}' in log
    assert re.search(r'resumed epoch: 2, iter: 4', log), log[-2000:]
    assert load_checkpoint_file(cut)['meta']['iter'] == 3 * ITERS_PER_EPOCH


def test_sigkill_then_resume(workspace, config, small, run_tool, repo_root):
    """SIGKILL mid-training, then --resume: training continues from the
    last complete checkpoint with the iteration count continuing."""
    work = osp.join(workspace, 'work_killed')
    pointer = osp.join(work, 'last_checkpoint')
    proc = subprocess.Popen(
        [sys.executable, osp.join(repo_root, 'tools', 'train.py'), config,
         '--work-dir', work,
         '--cfg-options', 'train_cfg.max_epochs=50', *small],
        cwd=workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (osp.isfile(pointer) and 'epoch_2' in open(pointer).read()):
            assert proc.poll() is None and time.time() < deadline, \
                'training ended or stalled before its second checkpoint'
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the last one named; later ones, if any, may be cut off mid-write
    last = open(pointer).read().strip()
    epoch = int(re.search(r'epoch_(\d+)\.pth', last)[1])
    log = run_tool('train.py', config, '--work-dir', work, '--resume',
                   '--cfg-options', f'train_cfg.max_epochs={epoch + 1}',
                   *small, cwd=workspace).log
    assert re.search(rf'resumed epoch: {epoch}, iter: '
                     rf'{epoch * ITERS_PER_EPOCH}', log), log[-2000:]
    final = load_checkpoint_file(osp.join(work, f'epoch_{epoch + 1}.pth'))
    assert final['meta']['iter'] == (epoch + 1) * ITERS_PER_EPOCH


def test_parcnet_through_mmdet_tools_and_ours(workspace, config_path, small,
                                              run_tool):
    """mmdet's own train.py / test.py run our config unchanged; our tools
    fuse ParC-Net and test it."""
    config = config_path('demo/ssdlite_parcnet_shapes.py')
    work = osp.join(workspace, 'work_parc')
    run_tool('train.py', config, '--work-dir', work, '--cfg-options',
             'train_cfg.max_epochs=1', *small, tools_dir=MMDET_TOOLS,
             cwd=workspace)
    ckpt = osp.join(work, 'epoch_1.pth')
    log = run_tool('test.py', config, ckpt, '--work-dir', work,
                   tools_dir=MMDET_TOOLS, cwd=workspace).log
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-2000:]
    fused = osp.join(work, 'fused.pth')
    run_tool('fuse.py', config, ckpt, fused, cwd=workspace)
    log = run_tool('test.py', config, fused, '--work-dir', work,
                   cwd=workspace).log
    assert 'Re-parameterized the model' in log
    assert re.search(r'coco/bbox_mAP: -?[0-9.]+', log), log[-2000:]
