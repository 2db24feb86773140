"""DeepLabV3 with our backbones: fused == unfused, mmseg's `pretrained`."""
import pytest
import torch
from mmengine.config import Config

import mmfalcon


def build_segmentor(config, **model_overrides):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(config)
    cfg.model.update(model_overrides)
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('config,dtype', [
    ('deeplabv3_falcon_voc.py', torch.float64),
    ('deeplabv3_falcon_os8_voc.py', torch.float64),
    ('deeplabv3_parcnet_voc.py', torch.float32),
    ('demo/deeplabv3_falcon_shapes.py', torch.float32),
])
def test_deeplabv3_fused_equals_unfused(config, dtype, randomize_bn,
                                        config_path):
    # Relative to the logits' scale, float64 for the paper-size FalconNet:
    # see test_ssdlite_fusion.py.
    model = randomize_bn(build_segmentor(config_path(config))).to(
        dtype).eval()
    x = torch.randn(1, 3, 67, 99, dtype=dtype)  # non-square, odd
    with torch.no_grad():
        before = model._forward(x)
        mmfalcon.fuse_model(model)
        after = model._forward(x)
    assert mmfalcon.is_fused(model)
    assert before.shape == after.shape and before.shape[1] in (4, 21)
    tol = 1e-10 if dtype == torch.float64 else 1e-5  # x the largest logit
    torch.testing.assert_close(after, before, rtol=0,
                               atol=tol * before.abs().max().item())


@pytest.mark.parametrize('config', ['deeplabv3_falcon_voc.py',
                                    'deeplabv3_falcon_os8_voc.py',
                                    'deeplabv3_parcnet_voc.py'])
def test_mmseg_model_level_pretrained_reaches_backbone(config, config_path):
    model = build_segmentor(config_path(config),
                            pretrained='ckpt/backbone.pth')
    assert model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint='ckpt/backbone.pth')


def test_missing_voc_root_is_named(tmp_path, config_path):
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(config_path('deeplabv3_falcon_voc.py'))
    dataset = cfg.train_dataloader.dataset.datasets[1]  # the SBD aug part
    (tmp_path / 'VOC2012' / 'ImageSets' / 'Segmentation').mkdir(parents=True)
    (tmp_path / 'VOC2012' / 'ImageSets' / 'Segmentation' / 'aug.txt').touch()
    (tmp_path / 'VOC2012' / 'JPEGImages').mkdir()
    dataset.data_root = str(tmp_path / 'VOC2012')
    with pytest.raises(FileNotFoundError,
                       match=r"SegmentationClassAug' does not exist.*README"):
        DATASETS.build(dataset)
    dataset.data_root = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match=r"nowhere' does not exist"):
        DATASETS.build(dataset)
