"""Our modules from a downstream project: the 'mmfalcon' registry scope,
custom_imports with plain names, and default_scope='mmfalcon'. Each build
runs in a fresh process, where nothing imported mmfalcon before."""
import subprocess
import sys

import pytest

SCOPED = '''
from {pkg}.registry import MODELS
from {pkg}.utils import register_all_modules
register_all_modules()
model = MODELS.build(dict(type='mmfalcon.FalconNet', arch='tiny'))
print(type(model).__module__, type(model).__name__)
'''

CUSTOM_IMPORTS = '''
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings
cfg = Config(dict(custom_imports=dict(imports=['mmfalcon.models'],
                                      allow_failed_imports=False)))
import_modules_from_strings(**cfg.custom_imports)
from {pkg}.registry import MODELS
from {pkg}.utils import register_all_modules
register_all_modules()
model = MODELS.build(dict(type='FalconNet', arch='tiny'))
print(type(model).__module__, type(model).__name__)
'''

# mmyolo's convention: under default_scope='mmfalcon' our modules take
# plain names and mmdet's take their scope prefix.
DEFAULT_SCOPE = '''
from mmengine.registry import MODELS, init_default_scope
from mmdet.utils import register_all_modules
register_all_modules(init_default_scope=False)
init_default_scope('mmfalcon')
model = MODELS.build(dict(
    type='mmdet.RetinaNet',
    data_preprocessor=dict(type='mmdet.DetDataPreprocessor'),
    backbone=dict(type='FalconNet', arch='tiny', out_indices=(2, 3)),
    neck=dict(type='mmdet.FPN', in_channels=[64, 128], out_channels=32,
              num_outs=2),
    bbox_head=dict(
        type='mmdet.RetinaHead', num_classes=3, in_channels=32,
        feat_channels=32, stacked_convs=1,
        anchor_generator=dict(type='mmdet.AnchorGenerator',
                              octave_base_scale=4, scales_per_octave=1,
                              ratios=[1.0], strides=[16, 32]),
        bbox_coder=dict(type='mmdet.DeltaXYWHBBoxCoder'),
        loss_cls=dict(type='mmdet.FocalLoss', use_sigmoid=True),
        loss_bbox=dict(type='mmdet.L1Loss'))))
print(type(model.backbone).__module__, type(model.backbone).__name__)
'''


def build_in_fresh_process(code):
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize('pkg', ['mmdet', 'mmseg'])
def test_scoped_type_builds_without_custom_imports(pkg):
    assert build_in_fresh_process(SCOPED.format(pkg=pkg)) == (
        'mmfalcon.models.backbones.falconnet FalconNet')


@pytest.mark.parametrize('pkg', ['mmdet', 'mmseg'])
def test_plain_type_builds_after_custom_imports(pkg):
    assert build_in_fresh_process(CUSTOM_IMPORTS.format(pkg=pkg)) == (
        'mmfalcon.models.backbones.falconnet FalconNet')


def test_default_scope_mmfalcon():
    assert build_in_fresh_process(DEFAULT_SCOPE) == (
        'mmfalcon.models.backbones.falconnet FalconNet')


def test_config_builds_ssdlite_detector(config_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(config_path('falconnet/ssdlite_falcon_coco.py'))
    assert 'custom_imports' not in cfg
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'FalconNet'
    assert type(model.bbox_head).__name__ == 'PredictableSSDHead'
