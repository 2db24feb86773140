"""Static INT8 quantization in ONNX Runtime (tools/deployment/quantize_onnx.py)
and the evaluation of ONNX outputs with the model's own post-processing."""
import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmfalcon.apis import init_model
from mmfalcon.datasets.synthetic_shapes import (make_coco_shapes,
                                                make_voc_shapes)
from mmfalcon.deployment import (OnnxRuntimeModule, TensorForward,
                                 export_onnx, input_size_from_config)
from mmfalcon.deployment.quantize import (calibration_inputs, evaluate,
                                          layer_errors, predict_from_outputs,
                                          preprocessed, quantize_onnx,
                                          eval_loader)
from mmfalcon.engine import save_fused_checkpoint
from mmfalcon.models import fuse_model

pytest.importorskip('onnxruntime')

H, W = 96, 128  # small, non-square


def small_cfg(name, tmp_path, config_path):
    """The demo config on a few generated images at H x W."""
    cfg = Config.fromfile(config_path(name))
    dataset = cfg.test_dataloader.dataset
    if cfg.default_scope == 'mmdet':
        root = make_coco_shapes(str(tmp_path / 'coco'), num_train=1,
                                num_val=3, size=(H, W), seed=1)
        dataset.data_root = root
        cfg.test_evaluator.ann_file = f'{root}/annotations/instances_val.json'
        for transform in dataset.pipeline:
            if transform.type == 'Resize':
                transform.scale = (W, H)
    else:
        root = make_voc_shapes(str(tmp_path / 'voc'), num_train=1, num_val=3,
                               size=(H, W), seed=1)
        dataset.data_root = root
        cfg.model.data_preprocessor.size = (H, W)
    return cfg


def fused_random(cfg, randomize_bn):
    torch.manual_seed(0)
    return fuse_model(randomize_bn(init_model(cfg, None, fuse=False))).eval()


@pytest.fixture
def det(tmp_path, config_path):
    """A freshly initialized fused SSDLite-FalconNet demo model, exported
    and quantized on 3 calibration images. Its BN statistics are left at
    their initial values: random ones add offsets that swamp the
    input-dependent part of the outputs (two images' outputs then differ
    by only 8-11%), so no tolerance could tell a good INT8 model from a
    miscalibrated one."""
    tmp = tmp_path
    cfg = small_cfg('demo/ssdlite_falcon_shapes.py', tmp, config_path)
    model = fused_random(cfg, lambda m: m)
    shape = (1, 3, *input_size_from_config(cfg))
    fp32, int8 = str(tmp / 'fp32.onnx'), str(tmp / 'int8.onnx')
    export_onnx(model, shape, fp32)
    calib = calibration_inputs(model, shape, 3)
    quantize_onnx(fp32, int8, calib)
    return dict(cfg=cfg, model=model, shape=shape, fp32=fp32, int8=int8,
                calib=calib, tmp=tmp)


def relative_error(outputs, reference):
    """Worst over outputs of max |out - ref| / max |ref|, as check_onnx."""
    return max(float((o - r).abs().max() / r.abs().max())
               for o, r in zip(outputs, reference))


def test_int8_model_runs_close_to_fp32(det):
    assert det['shape'] == (1, 3, H, W)
    assert len(det['calib']) == 3
    x = torch.from_numpy(det['calib'][0])
    fp32 = OnnxRuntimeModule(det['fp32'])(x)
    int8 = OnnxRuntimeModule(det['int8'])(x)
    assert [t.shape for t in int8] == [t.shape for t in fp32]
    # Each 8-bit tensor is rounded to 1/255 of its calibrated range, and
    # some 20 quantized layers compound that: the largest output error
    # is 2.2% of the output's scale here. Calibrated on inputs scaled by
    # 0.05 or 20 (ranges off), the same graph errs by 18-31%, and two
    # different images' fp32 outputs differ by 23%.
    err = relative_error(int8, fp32)
    assert err < 0.06, err
    assert err > 1e-4  # really quantized, not the float graph copied
    import onnx
    ops = {node.op_type for node in onnx.load(det['int8']).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops


def test_layer_errors_name_the_lossy_nodes(det):
    rows = layer_errors(det['fp32'], det['int8'], det['calib'][:1])
    names = [row[0] for row in rows]
    assert any(name.startswith('/backbone/') for name in names)
    assert all(loss >= 0 for _, _, _, loss in rows)
    # Every quantized tensor of this model keeps its noise below a third
    # of the signal's norm (> 10 dB) and really is quantized (< 100 dB,
    # relative noise above 1e-5) or exact (inf: an all-zero tensor).
    finite = [sqnr for _, _, sqnr, _ in rows if np.isfinite(sqnr)]
    assert finite and all(10 < sqnr < 100 for sqnr in finite), min(finite)
    # the per-node loss names backbone layers too, not only the head
    assert any(loss > 0 and name.startswith('/backbone/')
               for name, _, _, loss in rows)


@pytest.mark.parametrize('name', ['demo/ssdlite_falcon_shapes.py',
                                  'demo/deeplabv3_falcon_shapes.py'])
def test_postprocess_of_outputs_equals_predict(name, tmp_path, config_path,
                                               randomize_bn):
    """predict_from_outputs on the tensor forward's outputs gives what the
    model's own test_step gives."""
    cfg = small_cfg(name, tmp_path, config_path)
    model = fused_random(cfg, randomize_bn)
    loader = eval_loader(model)
    for (inputs, samples), data in zip(preprocessed(model, loader), loader):
        with torch.no_grad():
            ours = predict_from_outputs(model, TensorForward(model)(inputs),
                                        samples)[0]
            theirs = model.test_step(data)[0]
        if hasattr(model, 'bbox_head'):
            a, b = ours.pred_instances, theirs.pred_instances
            assert len(a) == len(b) > 0
            torch.testing.assert_close(a.bboxes, b.bboxes)
            torch.testing.assert_close(a.scores, b.scores)
            assert torch.equal(a.labels, b.labels)
        else:
            assert torch.equal(ours.pred_sem_seg.data,
                               theirs.pred_sem_seg.data)


def test_evaluate_fp32_onnx_equals_pytorch(det):
    pytorch = evaluate(det['model'], TensorForward(det['model']),
                       det['shape'])
    onnx = evaluate(det['model'], OnnxRuntimeModule(det['fp32']),
                    det['shape'])
    assert 'coco/bbox_mAP' in onnx
    for key, value in pytorch.items():
        assert abs(onnx[key] - value) <= 1e-3, (key, onnx[key], value)


def test_bad_input_is_named(det):
    with pytest.raises(ValueError, match='calibration images must be >= 1'):
        calibration_inputs(det['model'], det['shape'], 0)
    with pytest.raises(ValueError, match="calibration method 'kl'"):
        quantize_onnx(det['fp32'], str(det['tmp'] / 'x.onnx'), det['calib'],
                      method='kl')
    with pytest.raises(ValueError, match=r'preprocesses to \(1, 3, 96, 128\)'
                       r'.* takes \(1, 3, 64, 64\)'):
        evaluate(det['model'], TensorForward(det['model']), (1, 3, 64, 64))


@pytest.mark.slow
def test_quantize_tool(det, run_tool):
    cfg_file = str(det['tmp'] / 'small.py')
    det['cfg'].dump(cfg_file)
    ckpt = str(det['tmp'] / 'fused.pth')
    save_fused_checkpoint(det['model'], ckpt)
    out_file = det['tmp'] / 'tool_int8.onnx'
    out = run_tool('deployment/quantize_onnx.py', cfg_file, ckpt, out_file,
                   '--calib-images', '2', '--evaluate', '--layers', '3',
                   '--runs', '3')
    assert out_file.is_file()
    assert 'INT8 / fp32 latency' in out.stdout
    assert 'coco/bbox_mAP' in out.stdout
    assert 'lowest SQNR' in out.stdout
    out = run_tool('deployment/quantize_onnx.py', cfg_file, ckpt, out_file,
                   '--calib-images', '0', ok=False)
    assert 'calibration images must be >= 1' in out.stderr
    assert 'Traceback' not in out.stderr
