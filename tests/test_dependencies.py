"""mmfalcon without mmdet/mmseg, and the import guard of unsupported
versions. Each case runs in a fresh interpreter."""
import subprocess
import sys
import textwrap

import pytest

from mmfalcon.compat import ssd_head_cannot_predict
from mmfalcon.version import SUPPORTED_VERSIONS

WITHOUT_DOWNSTREAM = '''
import sys
sys.modules['mmdet'] = None  # import fails, find_spec says "absent"
sys.modules['mmseg'] = None
import torch
import mmfalcon
from mmfalcon.models import FalconNet, ParCNet
assert 'PredictableSSDHead' not in mmfalcon.models.__all__
for model in (FalconNet(arch='tiny', out_indices=(2, 3)),
              ParCNet(arch='xs', out_indices=(4, 5))):
    outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == list(model.out_channels)
    mmfalcon.fuse_model(model)
loaded = [m for m, mod in sys.modules.items()
          if mod is not None and m.split('.')[0] in ('mmdet', 'mmseg')]
assert not loaded, loaded
print('ok')
'''


def run_python(code, tmp_path=None):
    env_path = [] if tmp_path is None else [str(tmp_path)]
    prelude = f'import sys; sys.path[:0] = {env_path!r}\n'
    return subprocess.run([sys.executable, '-c', prelude + code],
                          capture_output=True, text=True)


def fake_package(tmp_path, name, body):
    package = tmp_path / name
    package.mkdir()
    (package / '__init__.py').write_text(textwrap.dedent(body))


def test_import_and_build_without_mmdet_and_mmseg():
    result = run_python(WITHOUT_DOWNSTREAM)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


@pytest.mark.parametrize('package,version', [('mmdet', '2.28.2'),
                                             ('mmdet', '3.4.0'),
                                             ('mmcv', '2.2.0')])
def test_unsupported_version_stops_import(tmp_path, package, version):
    fake_package(tmp_path, package, f'__version__ = {version!r}\n')
    result = run_python('import mmfalcon', tmp_path)
    dist, minimum, maximum = SUPPORTED_VERSIONS[package]
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f'ImportError: mmfalcon does not support '
                    f'{dist}=={version}: it needs {dist}>={minimum},'
                    f'<{maximum}.')


def test_error_inside_installed_mmdet_surfaces(tmp_path):
    fake_package(tmp_path, 'mmdet',
                 "raise ImportError('mmdet is broken: libfoo.so missing')\n")
    result = run_python('import mmfalcon', tmp_path)
    assert result.returncode != 0
    assert 'mmdet is broken: libfoo.so missing' in result.stderr


def test_ssd_head_fix_applies_to_broken_versions_only():
    assert ssd_head_cannot_predict('3.0.0')
    assert ssd_head_cannot_predict('3.3.0')
    assert not ssd_head_cannot_predict('3.4.0')
