"""ONNX export of the fused demo detectors, checked in onnxruntime."""
import os.path as osp
import subprocess
import sys

import pytest
from conftest import ROOT, config_path

from mmfalcon.deployment import (TensorForward, check_onnx, export_onnx,
                                 input_size_from_config)
from mmfalcon.apis import init_model
from mmfalcon.engine import save_fused_checkpoint
from mmfalcon.models import fuse_model

SHAPE = (1, 3, 160, 224)  # small and non-square


def fused_random_model(config, randomize_bn):
    model = init_model(config, None, fuse=False)
    randomize_bn(model)
    return fuse_model(model).eval()


@pytest.mark.parametrize('name', [
    'demo/ssdlite_falcon_shapes.py', 'demo/ssdlite_parcnet_shapes.py',
    'demo/deeplabv3_falcon_shapes.py'
])
def test_export_matches_pytorch(name, randomize_bn, tmp_path):
    model = fused_random_model(config_path(name), randomize_bn)
    path = str(tmp_path / 'model.onnx')
    names = export_onnx(model, SHAPE, path)
    if hasattr(model, 'bbox_head'):
        levels = len(model.bbox_head.cls_convs)
        assert names['output_names'] == [
            f'cls_score_{i}' for i in range(levels)
        ] + [f'bbox_pred_{i}' for i in range(levels)]
    else:  # the dilated FalconNet has padding='same' convs
        assert names['output_names'] == ['seg_logits']
    err = check_onnx(model, path, SHAPE)
    assert err < 1e-4, f'{name}: max abs error {err}'


def test_export_tool(randomize_bn, tmp_path):
    config = config_path('demo/ssdlite_falcon_shapes.py')
    ckpt = str(tmp_path / 'fused.pth')
    save_fused_checkpoint(fused_random_model(config, randomize_bn), ckpt)
    out = subprocess.run([
        sys.executable,
        osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py'), config, ckpt,
        str(tmp_path / 'model.onnx'), '--shape', '96', '128'
    ], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert 'input input [1, 3, 96, 128]' in out.stdout
    assert 'max abs error onnxruntime vs PyTorch' in out.stdout
    assert osp.isfile(tmp_path / 'model.onnx')


def test_export_tool_reports_missing_checkpoint(tmp_path):
    out = subprocess.run([
        sys.executable,
        osp.join(ROOT, 'tools', 'deployment', 'export_onnx.py'),
        config_path('demo/ssdlite_falcon_shapes.py'), 'nope.pth',
        str(tmp_path / 'model.onnx')
    ], capture_output=True, text=True)
    assert out.returncode != 0
    assert 'checkpoint nope.pth: no such file' in out.stderr


def test_missing_onnx_is_a_clear_error(monkeypatch, tmp_path):
    import torch.nn as nn
    monkeypatch.setitem(sys.modules, 'onnx', None)  # "not installed"
    with pytest.raises(ImportError, match='pip install onnx'):
        export_onnx(nn.Identity(), SHAPE, str(tmp_path / 'x.onnx'))


def test_input_size_from_config():
    from mmengine.config import Config
    cfg = Config.fromfile(config_path('demo/ssdlite_falcon_shapes.py'))
    assert input_size_from_config(cfg) == (320, 320)
    cfg.test_dataloader.dataset.pipeline[1].keep_ratio = True
    cfg.test_pipeline[1].keep_ratio = True
    assert input_size_from_config(cfg) == (320, 320)  # the default
    assert input_size_from_config(cfg, default=(64, 96)) == (64, 96)
    cfg.model.data_preprocessor.size = (192, 256)  # (h, w), as mmseg's
    assert input_size_from_config(cfg) == (192, 256)


def test_tensor_forward_rejects_non_mmdet_models():
    import torch.nn as nn
    with pytest.raises(TypeError, match='Linear has no _forward'):
        TensorForward(nn.Linear(2, 2))
