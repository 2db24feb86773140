"""ONNX export of the fused demo detectors, checked in onnxruntime."""
import sys

import pytest
import torch

from mmfalcon.apis import init_model
from mmfalcon.deployment import (OnnxRuntimeModule, TensorForward,
                                 check_onnx, export_module, export_onnx,
                                 input_size_from_config)
from mmfalcon.engine import save_fused_checkpoint
from mmfalcon.models import fuse_model

SHAPE = (1, 3, 160, 224)  # small and non-square


def fused_random_model(config, randomize_bn):
    model = init_model(config, None, fuse=False)
    randomize_bn(model)
    return fuse_model(model).eval()


@pytest.mark.slow
@pytest.mark.parametrize('name', [
    'demo/ssdlite_falcon_shapes.py', 'demo/ssdlite_parcnet_shapes.py',
    'demo/deeplabv3_falcon_shapes.py'
])
def test_export_matches_pytorch(name, randomize_bn, tmp_path, config_path):
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
    assert err < 1e-4, f'{name}: relative error {err}'


@pytest.mark.slow
def test_check_is_relative_to_the_output_scale(randomize_bn, tmp_path,
                                               config_path):
    """Logits scaled by 1e4 keep their relative float32 error (an absolute
    bound would fail them); a real 1e-3 change is measured as 1e-3."""
    model = fused_random_model(
        config_path('demo/deeplabv3_falcon_shapes.py'), randomize_bn)
    head = model.decode_head.conv_seg
    with torch.no_grad():
        head.weight.mul_(1e4)
        head.bias.mul_(1e4)
    path = str(tmp_path / 'model.onnx')
    export_onnx(model, SHAPE, path)
    assert check_onnx(model, path, SHAPE) < 1e-5
    with torch.no_grad():
        head.weight.mul_(1 + 1e-3)
        head.bias.mul_(1 + 1e-3)
    assert 0.9e-3 < check_onnx(model, path, SHAPE) < 1.1e-3


@pytest.mark.slow
def test_export_tool(randomize_bn, tmp_path, config_path, run_tool):
    config = config_path('demo/ssdlite_falcon_shapes.py')
    ckpt = str(tmp_path / 'fused.pth')
    save_fused_checkpoint(fused_random_model(config, randomize_bn), ckpt)
    onnx_file = tmp_path / 'model.onnx'
    out = run_tool('deployment/export_onnx.py', config, ckpt, onnx_file,
                   '--shape', '96', '128')
    assert 'input input [1, 3, 96, 128]' in out.stdout
    assert 'relative error onnxruntime vs PyTorch' in out.stdout
    assert onnx_file.is_file()
    out = run_tool('deployment/export_onnx.py', config, ckpt, onnx_file,
                   '--shape', '96', '128', '--tolerance', '0', ok=None)
    # float32 rounding differs somewhere, so a zero tolerance fails cleanly
    assert out.returncode != 0
    assert 'ONNX check failed: relative error' in out.stderr
    assert 'Traceback' not in out.stderr


def test_missing_onnx_is_a_clear_error(monkeypatch, tmp_path):
    import torch.nn as nn
    monkeypatch.setitem(sys.modules, 'onnx', None)  # "not installed"
    with pytest.raises(ImportError, match='pip install onnx'):
        export_onnx(nn.Identity(), SHAPE, str(tmp_path / 'x.onnx'))


def test_input_size_from_config(config_path):
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


@pytest.mark.parametrize('kernel,dilation,pads', [(3, 2, 0), (2, 1, 1)])
def test_same_padding_export(kernel, dilation, pads, tmp_path):
    """A dilated ``padding='same'`` conv exports with explicit padding: the
    conv's own where it is symmetric, a Pad node for an odd total."""
    onnx = pytest.importorskip('onnx')
    import torch.nn as nn
    conv = nn.Conv2d(4, 4, kernel, padding='same', dilation=dilation,
                     groups=4).eval()
    path = str(tmp_path / 'conv.onnx')
    shape = (1, 4, 9, 10)
    export_module(conv, shape, path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count('Pad') == pads
    x = torch.randn(shape)
    with torch.no_grad():
        expected = conv(x)
    assert torch.allclose(OnnxRuntimeModule(path)(x)[0], expected,
                          atol=1e-5)


def test_parcnet_export_records_cached_mixers(randomize_bn, tmp_path):
    """export_module's first run at the export shape fills the fused ParC
    caches, so the graph holds each merged token mixer as two MatMuls on
    constant circulants, no Resize of a meta kernel; ONNX Runtime gives
    PyTorch's outputs."""
    onnx = pytest.importorskip('onnx')
    from mmfalcon.models import ParCNet
    from mmfalcon.models.layers.parc import ParCBlock
    torch.manual_seed(0)
    arch = dict(stem_channels=8, mv2_layers=[[8, 1, 1], [16, 1, 2]],
                parc_layers=[[16, 16, 32, 1, 8], [24, 24, 48, 2, 4]],
                fusion='concat', head_channels=32)
    model = fuse_model(randomize_bn(
        ParCNet(arch, out_indices=(3, 4, 5), drop_rate=0.))).eval()
    path = str(tmp_path / 'parcnet.onnx')
    export_module(model, SHAPE, path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    blocks = sum(isinstance(m, ParCBlock) for m in model.modules())
    assert 'Resize' not in ops
    assert ops.count('MatMul') == 2 * blocks
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = model(x)
    for ours, theirs in zip(expected, OnnxRuntimeModule(path)(x),
                            strict=True):
        rel = (ours - theirs).abs().max() / ours.abs().max()
        assert rel.item() < 1e-5
