"""The wheel carries configs, tools and model-index.yml under
mmfalcon/.mim, and an installed (non-editable) mmfalcon finds its configs
through ``mmfalcon.utils.config_file`` and through ``mim train``."""
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest

from mmfalcon.datasets import make_coco_shapes
from mmfalcon.version import SUPPORTED_VERSIONS

pytestmark = pytest.mark.slow

# openmim's command line without its dataset downloader, installed apart by
# scripts/setup_env.sh (requirements/mim.txt)
MIM_PATH = osp.join(sys.prefix, 'mim')

LOOKUP = '''
import sys
import mmfalcon
from mmengine.config import Config
from mmfalcon.utils import config_file
assert mmfalcon.__file__.startswith(sys.argv[1]), mmfalcon.__file__
cfg = Config.fromfile(config_file('demo/ssdlite_falcon_shapes.py'))
print(cfg.model.backbone.type, cfg.filename)
'''


@pytest.fixture(scope='module')
def installed(tmp_path_factory, repo_root):
    """The wheel built from a copy of this checkout, installed with
    ``pip install --target`` (no editable link back to the sources)."""
    root = tmp_path_factory.mktemp('packaging')
    files = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
        cwd=repo_root, capture_output=True, text=True,
        check=True).stdout.split()
    src = root / 'src'
    for name in files:
        if osp.isfile(osp.join(repo_root, name)):
            os.makedirs(src / osp.dirname(name), exist_ok=True)
            shutil.copy2(osp.join(repo_root, name), src / name)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
    subprocess.run(pip + ['wheel', str(src), '--no-deps',
                          '--no-build-isolation', '-w', str(root / 'dist')],
                   check=True, capture_output=True)
    wheel, = (root / 'dist').glob('mmfalcon-*.whl')
    site = root / 'site'
    subprocess.run(pip + ['install', '--no-deps', '--target', str(site),
                          str(wheel)], check=True, capture_output=True)
    return wheel, site


def test_wheel_carries_configs_tools_and_model_index(installed, repo_root):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ('model-index.yml', 'configs/demo/ssdlite_falcon_shapes.py',
                 'configs/_base_/det_runtime.py', 'tools/train.py',
                 'tools/test.py'):
        assert f'mmfalcon/.mim/{path}' in names, path
    assert not any('__pycache__' in name for name in names)
    configs = {
        osp.relpath(osp.join(d, f), osp.join(repo_root, 'configs'))
        for d, _, fs in os.walk(osp.join(repo_root, 'configs')) for f in fs
        if f.endswith(('.py', '.yml', '.md'))
    }
    packed = {
        n[len('mmfalcon/.mim/configs/'):]
        for n in names if n.startswith('mmfalcon/.mim/configs/')
    }
    assert configs <= packed


def test_wheel_requires_the_supported_ranges(installed):
    wheel, _ = installed
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(
        n for n in archive.namelist() if n.endswith('METADATA'))).decode()
    requires = {line.split(': ', 1)[1] for line in metadata.splitlines()
                if line.startswith('Requires-Dist: ')}
    for package, extra in (('mmengine', None), ('mmcv', None),
                           ('mmdet', 'det'), ('mmseg', 'seg')):
        dist, minimum, maximum = SUPPORTED_VERSIONS[package]
        spec = f'{dist}<{maximum},>={minimum}'
        assert (spec if extra is None else f'{spec}; extra == "{extra}"'
                ) in requires, (spec, requires)
    assert 'mmdet' not in ' '.join(r for r in requires if 'extra' not in r)


def test_installed_package_finds_its_configs(installed, tmp_path):
    _, site = installed
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, '-c', LOOKUP, str(site)],
                         env=env, cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    backbone, filename = out.stdout.split()
    assert backbone == 'mmfalcon.FalconNet'
    assert filename.startswith(str(site / 'mmfalcon' / '.mim' / 'configs'))


@pytest.mark.skipif(not osp.isdir(MIM_PATH),
                    reason=f'no mim command line in {MIM_PATH}')
def test_mim_train_finds_config_and_tool(installed, tmp_path,
                                         single_process_loaders):
    _, site = installed
    make_coco_shapes(str(tmp_path / 'data' / 'shapes_coco'), num_train=4,
                     num_val=2, seed=2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), MIM_PATH]))
    out = subprocess.run(
        [sys.executable, '-W', 'ignore', '-c',
         'from mim.cli import cli; cli()', 'train', 'mmfalcon',
         'ssdlite_falcon_shapes.py', '--work-dir', 'work', '--cfg-options',
         'train_cfg.max_epochs=1', 'train_dataloader.batch_size=2',
         *single_process_loaders],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    command = next(line for line in out.stdout.splitlines()
                   if line.startswith('Training command is'))
    mim_dir = str(site / 'mmfalcon' / '.mim')
    assert f'{mim_dir}/tools/train.py' in command
    assert f'{mim_dir}/configs/demo/ssdlite_falcon_shapes.py' in command
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
