"""Every tool that reads a checkpoint refuses one that would run code, with
one clear message and without running it; --trust-checkpoint opts in."""
import argparse
import os.path as osp

import pytest
import torch

from mmfalcon.apis import init_model
from mmfalcon.datasets import make_coco_shapes
from mmfalcon.fileio import TRUST_ENV, TRUST_FLAG

DEMO = 'demo/ssdlite_falcon_shapes.py'


def tool_runs(config, ckpt, tmp_path, image):
    """Every tool run that reads ``ckpt``: name -> (script, arguments)."""
    work = tmp_path / 'work'
    return {
        'test': ('test.py', [config, ckpt, '--work-dir', work]),
        'train --resume': ('train.py', [config, '--work-dir', work,
                                        '--resume', ckpt]),
        'train load_from': ('train.py', [config, '--work-dir', work,
                                         '--cfg-options',
                                         f'load_from={ckpt}']),
        'fuse': ('fuse.py', [config, ckpt, tmp_path / 'fused.pth']),
        'image demo': ('demo/image_demo.py', [image, config, ckpt,
                                              '--out-file',
                                              tmp_path / 'out.png']),
        'onnx export': ('deployment/export_onnx.py',
                        [config, ckpt, tmp_path / 'm.onnx']),
        'parcnet converter': ('model_converters/parcnet_official.py',
                              [ckpt, tmp_path / 'c.pth']),
    }


@pytest.mark.slow
@pytest.mark.parametrize('run', [
    'test', 'train --resume', 'train load_from', 'fuse', 'image demo',
    'onnx export', 'parcnet converter'
])
def test_tool_refuses_code_running_checkpoint(run, crafted_checkpoint,
                                              clean_env, config_path,
                                              run_tool, tmp_path):
    ckpt, marker = crafted_checkpoint
    image = tmp_path / 'scene.jpg'
    image.write_bytes(b'')  # never read: the checkpoint is refused first
    script, args = tool_runs(config_path(DEMO), ckpt, tmp_path, image)[run]
    make_coco_shapes(str(tmp_path / 'data' / 'shapes_coco'), num_train=2,
                     num_val=1, seed=1)  # the config's data, in cwd
    out = run_tool(script, *args, cwd=tmp_path, env=clean_env, ok=False)
    assert f'Refused to load {ckpt}' in out.stderr, out.log[-3000:]
    assert 'posix.system' in out.stderr and TRUST_FLAG in out.stderr
    assert 'Traceback' not in out.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_trust_flag_and_env_opt_in(tmp_path, clean_env, config_path,
                                   run_tool):
    """A checkpoint holding an object outside the allowlist: refused by
    default, loaded with --trust-checkpoint or the environment variable."""
    config = config_path(DEMO)
    ckpt = str(tmp_path / 'epoch_1.pth')
    model = init_model(config, None, fuse=False)
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(args=argparse.Namespace(lr=0.1))), ckpt)
    out = run_tool('fuse.py', config, ckpt, tmp_path / 'a.pth',
                   env=clean_env, ok=False)
    assert 'argparse.Namespace' in out.stderr, out.log[-3000:]
    run_tool('fuse.py', config, ckpt, tmp_path / 'b.pth', TRUST_FLAG,
             env=clean_env)
    run_tool('fuse.py', config, ckpt, tmp_path / 'c.pth',
             env=dict(clean_env, **{TRUST_ENV: '1'}))
    assert osp.isfile(tmp_path / 'b.pth') and osp.isfile(tmp_path / 'c.pth')


@pytest.mark.parametrize('tool', ['test.py', 'deployment/export_onnx.py'])
def test_missing_checkpoint_is_named(tool, config_path, run_tool, tmp_path):
    out = run_tool(tool, config_path(DEMO), 'nope.pth',
                   *(['x.onnx'] if 'onnx' in tool else []), cwd=tmp_path,
                   ok=False)
    assert 'checkpoint nope.pth: no such file' in out.stderr
