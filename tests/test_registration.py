"""A foreign mmdet / mmseg config reaches our backbones by custom_imports."""
import subprocess
import sys

import pytest
from conftest import config_path

SNIPPET = '''
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings
cfg = Config(dict(custom_imports=dict(imports=['mmfalcon.models'],
                                      allow_failed_imports=False)))
import_modules_from_strings(**cfg.custom_imports)
from {pkg}.registry import MODELS
from {pkg}.utils import register_all_modules
register_all_modules()
model = MODELS.build(dict(type='FalconNet', arch='tiny', out_indices=(2, 3)))
print(type(model).__name__)
'''


@pytest.mark.parametrize('pkg', ['mmdet', 'mmseg'])
def test_build_through_downstream_registry(pkg):
    # A fresh process: nothing imported mmfalcon before custom_imports.
    out = subprocess.run([sys.executable, '-c', SNIPPET.format(pkg=pkg)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith('FalconNet')


def test_config_builds_ssdlite_detector():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(config_path('ssdlite_falcon_coco.py'))
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'FalconNet'
    assert type(model.bbox_head).__name__ == 'PredictableSSDHead'
