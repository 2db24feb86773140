"""Mixed precision without CUDA: bfloat16 autocast on the CPU."""
import json
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from mmfalcon.datasets import make_coco_shapes
from mmfalcon.engine import CPUAmpOptimWrapper
from mmfalcon.engine.cli import enable_amp


def test_cpu_amp_wrapper_runs_the_forward_in_bfloat16():
    model = nn.Linear(4, 2)
    wrapper = CPUAmpOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(3, 4)
    with wrapper.optim_context(model):
        out = model(x)
    assert out.dtype == torch.bfloat16
    before = model.weight.detach().clone()
    wrapper.update_params(out.float().square().mean())
    assert model.weight.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(model.weight, before)
    assert model(x).dtype == torch.float32  # outside the context: fp32


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
@pytest.mark.parametrize('wrapper', [
    dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
    dict(type='AmpOptimWrapper', loss_scale='dynamic',
         optimizer=dict(type='SGD', lr=0.1)),
])
def test_enable_amp_without_cuda_picks_the_cpu_wrapper(wrapper):
    cfg = Config(dict(optim_wrapper=wrapper))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'mmfalcon.CPUAmpOptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.type == 'SGD'


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_train_with_amp_on_cpu(tmp_path, config_path, run_tool,
                               single_process_loaders):
    make_coco_shapes(str(tmp_path / 'data' / 'shapes_coco'), num_train=4,
                     num_val=2, seed=3)
    work = tmp_path / 'work'
    out = run_tool('train.py', config_path('demo/ssdlite_falcon_shapes.py'),
                   '--amp', '--work-dir', work, '--cfg-options',
                   'train_cfg.max_epochs=1', 'train_dataloader.batch_size=2',
                   'default_hooks.logger.interval=1',
                   *single_process_loaders, cwd=tmp_path)
    assert 'AMP trains in bfloat16 autocast on the CPU' in out.log
    assert 'Traceback' not in out.log
    logs = [json.loads(line) for line in open(
        next(work.glob('*/vis_data/scalars.json')))]
    losses = [entry['loss'] for entry in logs if 'loss' in entry]
    assert losses and all(map(lambda v: v == v and abs(v) < 1e4, losses))
    assert osp.isfile(work / 'epoch_1.pth')
