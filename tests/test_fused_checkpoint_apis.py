"""Fused checkpoints through OpenMMLab's own APIs, with the config the model
was trained with: mmdet's ``init_detector`` / ``DetInferencer`` and mmseg's
``init_model`` / ``MMSegInferencer`` fuse the model to match a fused
checkpoint, predict what the training checkpoint predicts, and refuse a
fused checkpoint that does not match the model."""
import copy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from mmfalcon.engine import save_fused_checkpoint
from mmfalcon.models import (CheckpointMismatchError, FalconNet, fuse_model,
                             is_fused)

DET_CONFIG = 'demo/ssdlite_falcon_shapes.py'
SEG_CONFIG = 'demo/deeplabv3_falcon_shapes.py'
# float32 through the fused and the unfused model, relative to the output
TOLERANCE = 1e-4


def _relative_error(expected, actual):
    return ((expected - actual).abs().max() /
            expected.abs().max().clamp_min(1e-12)).item()


def _seg_config(config_path):
    cfg = Config.fromfile(config_path(SEG_CONFIG))
    # one CPU process: torch's SyncBN does not run on the CPU
    cfg.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.backbone.norm_cfg = cfg.norm_cfg
    cfg.model.decode_head.norm_cfg = cfg.norm_cfg
    cfg.model.auxiliary_head.norm_cfg = cfg.norm_cfg
    return cfg


def _save_both(model, tmp_path, randomize_bn):
    """A training checkpoint of ``model`` (random BN statistics) and the
    fused checkpoint tools/fuse.py would write from it."""
    randomize_bn(model)
    training = str(tmp_path / 'training.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), training)
    fused = str(tmp_path / 'fused.pth')
    save_fused_checkpoint(fuse_model(copy.deepcopy(model).eval()), fused)
    return training, fused


@pytest.fixture(scope='module')
def image():
    return (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(
        np.uint8)


@pytest.fixture
def det_checkpoints(config_path, tmp_path, randomize_bn):
    from mmdet.apis import init_detector
    return _save_both(init_detector(config_path(DET_CONFIG), device='cpu'),
                      tmp_path, randomize_bn)


def test_init_detector_fuses_to_match_a_fused_checkpoint(
        config_path, det_checkpoints):
    from mmdet.apis import init_detector
    training, fused = det_checkpoints
    unfused = init_detector(config_path(DET_CONFIG), training, device='cpu')
    model = init_detector(config_path(DET_CONFIG), fused, device='cpu')
    assert not is_fused(unfused)
    assert is_fused(model)
    # the necks' and heads' BN were folded too, none runs at its defaults
    assert not [name for name, module in model.named_modules()
                if isinstance(module, _BatchNorm)]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, actual = unfused._forward(x), model._forward(x)
    for want, got in zip(expected, actual):
        for level_want, level_got in zip(want, got):
            assert _relative_error(level_want, level_got) < TOLERANCE


def test_det_inferencer_predicts_the_same_from_both_checkpoints(
        config_path, det_checkpoints, image):
    from mmdet.apis import DetInferencer
    predictions = []
    for weights in det_checkpoints:
        inferencer = DetInferencer(model=config_path(DET_CONFIG),
                                   weights=weights, device='cpu',
                                   show_progress=False)
        assert is_fused(inferencer.model) == (weights.endswith('fused.pth'))
        result = inferencer(image, return_datasamples=True)
        predictions.append(result['predictions'][0].pred_instances)
    training, fused = predictions
    top = min(len(training), 20)
    assert top > 0
    # the highest scores are far apart, so their order is the same
    torch.testing.assert_close(fused.scores[:top], training.scores[:top],
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(fused.bboxes[:top], training.bboxes[:top],
                               rtol=0, atol=1e-2)
    assert torch.equal(fused.labels[:top], training.labels[:top])


def test_seg_apis_predict_the_same_from_both_checkpoints(
        config_path, tmp_path, randomize_bn, image):
    from mmseg.apis import MMSegInferencer, init_model
    cfg = _seg_config(config_path)
    training, fused = _save_both(init_model(cfg, device='cpu'), tmp_path,
                                 randomize_bn)
    unfused = init_model(cfg, training, device='cpu')
    model = init_model(cfg, fused, device='cpu')
    assert is_fused(model) and not is_fused(unfused)
    assert not [name for name, module in model.named_modules()
                if isinstance(module, _BatchNorm)]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = unfused._forward(x), model._forward(x)
    assert _relative_error(expected, actual) < TOLERANCE

    logits = []
    for weights in (training, fused):
        inferencer = MMSegInferencer(model=cfg, weights=weights,
                                     device='cpu')
        result = inferencer(image, return_datasamples=True)
        logits.append(result.seg_logits.data)
    assert _relative_error(*logits) < TOLERANCE


def test_a_fused_checkpoint_of_another_model_is_refused(
        config_path, det_checkpoints):
    from mmdet.apis import init_detector
    _, fused = det_checkpoints
    ckpt = torch.load(fused, weights_only=True)
    dropped = 'bbox_head.cls_convs.0.0.conv.bias'
    assert dropped in ckpt['state_dict']
    del ckpt['state_dict'][dropped]
    torch.save(ckpt, fused)
    # that conv is no longer recognisably folded: its BN stays and is missing
    with pytest.raises(CheckpointMismatchError,
                       match='missing bbox_head.cls_convs.0.0.bn.'):
        init_detector(config_path(DET_CONFIG), fused, device='cpu')

    # a whole checkpoint into another arch (deeper, wider)
    cfg = Config.fromfile(config_path(DET_CONFIG))
    cfg.model.backbone.arch = 'small'
    with pytest.raises(CheckpointMismatchError,
                       match='does not match SingleStageDetector'):
        init_detector(cfg, fused, device='cpu')


def test_a_backbone_takes_the_form_of_its_checkpoint(randomize_bn):
    source = randomize_bn(FalconNet('tiny', out_indices=(3, ))).eval()
    fused = fuse_model(copy.deepcopy(source))
    model = FalconNet('tiny', out_indices=(3, )).eval()
    model.load_state_dict(fused.state_dict())
    assert is_fused(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _relative_error(source(x)[0], model(x)[0]) < TOLERANCE
    # the other way round cannot be: a fused model has no branches
    with pytest.raises(RuntimeError, match='unfused \\(training\\) form'):
        fused.load_state_dict(source.state_dict())


def test_models_without_an_mmfalcon_backbone_are_left_alone():
    from mmcv.cnn import ConvModule
    model = torch.nn.Sequential(ConvModule(3, 4, 3, norm_cfg=dict(type='BN')))
    folded = fuse_model(copy.deepcopy(model))
    missing = model.load_state_dict(folded.state_dict(), strict=False)
    # torch's own behaviour: the BN is missing, nothing was fused
    assert isinstance(model[0].bn, _BatchNorm)
    assert '0.bn.weight' in missing.missing_keys
