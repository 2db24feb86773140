"""Our modules from a downstream project: the 'mmfalcon' registry scope,
custom_imports with plain names, and default_scope='mmfalcon'. Each build
runs in a fresh process, where nothing imported mmfalcon before."""
import json
import subprocess
import sys

import pytest

# One of each backbone; ParCNet builds its channel attention gate
# (PyTorch's Hardsigmoid) without any registry entry of ours.
BACKBONES = "[('FalconNet', 'tiny'), ('ParCNet', 'xs')]"
BUILT = ('mmfalcon.models.backbones.falconnet.FalconNet '
         'mmfalcon.models.backbones.parcnet.ParCNet')

SCOPED = '''
from {pkg}.registry import MODELS
from {pkg}.utils import register_all_modules
register_all_modules()
models = [MODELS.build(dict(type='mmfalcon.' + name, arch=arch))
          for name, arch in {backbones}]
print(*(f'{{type(m).__module__}}.{{type(m).__name__}}' for m in models))
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
models = [MODELS.build(dict(type=name, arch=arch))
          for name, arch in {backbones}]
print(*(f'{{type(m).__module__}}.{{type(m).__name__}}' for m in models))
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


# Records every registration that mmfalcon's code makes into one of
# mmengine's root registries (those without a parent) while
# ``mmfalcon.models`` is imported: the registering frame is the first one
# outside mmengine's registry module.
ROOT_REGISTRATIONS = '''
import importlib.util
import inspect
import json
import os
import sys
from mmengine.registry import Registry

registry_file = inspect.getsourcefile(Registry)
package = importlib.util.find_spec('mmfalcon').submodule_search_locations[0]
found = []
register = Registry._register_module


def recording(self, module, module_name=None, force=False):
    if self.parent is None:
        frame = sys._getframe(1)
        while frame.f_code.co_filename == registry_file:
            frame = frame.f_back
        if frame.f_code.co_filename.startswith(package + os.sep):
            names = module_name or module.__name__
            for name in [names] if isinstance(names, str) else names:
                found.append([self.name, name])
    return register(self, module, module_name, force)


Registry._register_module = recording
import mmfalcon.models
print(json.dumps(sorted(found)))
'''

# mmdet's and mmseg's registries resolve a plain ``type`` in their own scope
# and then in mmengine's root, never in the sibling 'mmfalcon' scope; so what
# a config names by plain type after custom_imports=['mmfalcon.models'] must
# be in the root, and nothing else: the two backbones and the SSD head in
# MODELS, and the VOC dataset (``import mmfalcon.models`` runs the package's
# __init__, which imports mmfalcon.datasets) in DATASETS. Layers and
# activations are built by the package itself and stay out of the root.
ROOT_NAMES_PLAIN_CONFIGS_NEED = [
    ['dataset', 'CheckedPascalVOCDataset'], ['model', 'FalconNet'],
    ['model', 'ParCNet'], ['model', 'PredictableSSDHead']]


def build_in_fresh_process(code):
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize('pkg', ['mmdet', 'mmseg'])
def test_scoped_type_builds_without_custom_imports(pkg):
    assert build_in_fresh_process(
        SCOPED.format(pkg=pkg, backbones=BACKBONES)) == BUILT


@pytest.mark.parametrize('pkg', ['mmdet', 'mmseg'])
def test_plain_type_builds_after_custom_imports(pkg):
    assert build_in_fresh_process(
        CUSTOM_IMPORTS.format(pkg=pkg, backbones=BACKBONES)) == BUILT


def test_default_scope_mmfalcon():
    assert build_in_fresh_process(DEFAULT_SCOPE) == (
        'mmfalcon.models.backbones.falconnet FalconNet')


def test_root_registrations_are_what_plain_names_need():
    found = json.loads(build_in_fresh_process(ROOT_REGISTRATIONS))
    assert found == ROOT_NAMES_PLAIN_CONFIGS_NEED


def test_config_builds_ssdlite_detector(config_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(config_path('ssdlite_falcon_coco.py'))
    assert 'custom_imports' not in cfg
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'FalconNet'
    assert type(model.bbox_head).__name__ == 'PredictableSSDHead'
