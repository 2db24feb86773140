"""The wheel and the sdist carry configs, tools and model-index.yml under
mmfalcon/.mim; an installed (non-editable) mmfalcon, from either, finds its
configs through ``mmfalcon.utils.config_file``, and ``mim train`` runs the
COCO config from the wheel."""
import email
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch
from mmengine.config import Config

from mmfalcon.datasets import make_coco_shapes
from mmfalcon.version import SUPPORTED_VERSIONS

pytestmark = pytest.mark.slow

# openmim's command line without its dataset downloader, installed apart by
# scripts/setup_env.sh (requirements/mim.txt)
MIM_PATH = osp.join(sys.prefix, 'mim')
PIP = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']

LOOKUP = '''
import sys
import mmfalcon
from mmengine.config import Config
from mmfalcon.utils import config_file
assert mmfalcon.__file__.startswith(sys.argv[1]), mmfalcon.__file__
cfg = Config.fromfile(config_file('demo/ssdlite_falcon_shapes.py'))
print(cfg.model.backbone.type, cfg.filename)
'''


def run_checked(cmd, cwd=None):
    """Run ``cmd``; fail the test with its output if it exits non-zero."""
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        pytest.fail(f'{" ".join(map(str, cmd))} exited with '
                    f'{out.returncode}:\n{out.stdout[-3000:]}'
                    f'{out.stderr[-3000:]}')


def copy_checkout(repo_root, dest):
    """Copy the files git tracks or would track (no build outputs, no
    ``mmfalcon/.mim`` links) of ``repo_root`` to ``dest``; return ``dest``."""
    files = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
        cwd=repo_root, capture_output=True, text=True,
        check=True).stdout.split()
    for name in files:
        if osp.isfile(osp.join(repo_root, name)):
            os.makedirs(dest / osp.dirname(name), exist_ok=True)
            shutil.copy2(osp.join(repo_root, name), dest / name)
    return dest


def install_target(dist, site):
    """``pip install`` the wheel or sdist ``dist`` into the folder
    ``site``, without dependencies (the test environment has them)."""
    run_checked(PIP + ['install', '--no-deps', '--no-build-isolation',
                       '--target', str(site), str(dist)])


@pytest.fixture(scope='module')
def installed(tmp_path_factory, repo_root):
    """The wheel built from a copy of this checkout, installed with
    ``pip install --target`` (no editable link back to the sources)."""
    root = tmp_path_factory.mktemp('packaging')
    src = copy_checkout(repo_root, root / 'src')
    run_checked(PIP + ['wheel', str(src), '--no-deps', '--no-build-isolation',
                       '-w', str(root / 'dist')])
    wheel, = (root / 'dist').glob('mmfalcon-*.whl')
    install_target(wheel, root / 'site')
    return wheel, root / 'site'


@pytest.fixture(scope='module')
def sdist_installed(tmp_path_factory, repo_root):
    """The sdist built from a copy of this checkout, installed with
    ``pip install --target``: pip builds the wheel from the unpacked
    tarball, where only what MANIFEST.in packed exists."""
    root = tmp_path_factory.mktemp('sdist')
    src = copy_checkout(repo_root, root / 'src')
    run_checked([sys.executable, 'setup.py', '-q', 'sdist', '-d',
                 str(root / 'dist')], cwd=src)
    tarball, = (root / 'dist').glob('mmfalcon-*.tar.gz')
    install_target(tarball, root / 'site')
    return tarball, root / 'site'


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


def wheel_metadata(wheel):
    """The core metadata (METADATA) of ``wheel``, parsed."""
    archive = zipfile.ZipFile(wheel)
    return email.message_from_bytes(archive.read(next(
        n for n in archive.namelist() if n.endswith('.dist-info/METADATA'))))


def test_wheel_requires_the_supported_ranges(installed):
    wheel, _ = installed
    requires = set(wheel_metadata(wheel).get_all('Requires-Dist'))
    for package, extra in (('mmengine', None), ('mmcv', None),
                           ('mmdet', 'det'), ('mmseg', 'seg')):
        dist, minimum, maximum = SUPPORTED_VERSIONS[package]
        spec = f'{dist}<{maximum},>={minimum}'
        assert (spec if extra is None else f'{spec}; extra == "{extra}"'
                ) in requires, (spec, requires)
    assert 'mmdet' not in ' '.join(r for r in requires if 'extra' not in r)


def test_wheel_names_license_home_and_classifiers(installed, repo_root):
    wheel, _ = installed
    metadata = wheel_metadata(wheel)
    assert metadata['License-Expression'] == 'Apache-2.0'
    assert metadata.get_all('License-File') == ['LICENSE']
    homes = [metadata['Home-page']] + [
        url.split(', ', 1)[1] for url in metadata.get_all('Project-URL', [])]
    assert any(home and home.startswith('https://') for home in homes), homes
    classifiers = metadata.get_all('Classifier')
    for prefix in ('Development Status :: ', 'Operating System :: ',
                   'Programming Language :: Python :: 3.',
                   'Topic :: Scientific/Engineering :: Artificial '
                   'Intelligence'):
        assert any(c.startswith(prefix) for c in classifiers), (prefix,
                                                                 classifiers)
    with open(osp.join(repo_root, 'LICENSE'), 'rb') as f:
        license_text = f.read()
    archive = zipfile.ZipFile(wheel)
    assert archive.read(next(
        n for n in archive.namelist()
        if n.endswith('.dist-info/licenses/LICENSE'))) == license_text


def test_sdist_carries_what_setup_reads_and_the_mim_payload(
        sdist_installed, repo_root):
    tarball, _ = sdist_installed
    with tarfile.open(tarball) as archive:
        members = {m.name.split('/', 1)[1]: m for m in archive.getmembers()
                   if '/' in m.name}
        read = [
            osp.relpath(p, repo_root)
            for p in glob.glob(osp.join(repo_root, 'requirements', '*.txt'))
        ] + ['README.md', 'LICENSE', 'mmfalcon/version.py']
        mim = ['model-index.yml', 'configs/ssdlite_falcon_coco.py',
               'configs/_base_/det_runtime.py', 'tools/train.py',
               'tools/dist_train.sh']
        for path in read + [f'mmfalcon/.mim/{p}' for p in mim]:
            assert path in members, path
        with open(osp.join(repo_root, 'LICENSE'), 'rb') as f:
            assert archive.extractfile(members['LICENSE']).read() == f.read()


def test_build_without_configs_or_their_copy_names_them(tmp_path, repo_root):
    src = copy_checkout(repo_root, tmp_path / 'src')
    shutil.rmtree(src / 'configs')
    out = subprocess.run([sys.executable, 'setup.py', '-q', 'bdist_wheel',
                          '-d', str(tmp_path / 'dist')], cwd=src,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert (f'configs: neither {src / "configs"} nor its packed copy '
            f'{src / "mmfalcon" / ".mim" / "configs"} exists') in out.stderr


@pytest.mark.parametrize('install', ['installed', 'sdist_installed'])
def test_installed_package_finds_its_configs(install, request, tmp_path):
    _, site = request.getfixturevalue(install)
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, '-c', LOOKUP, str(site)],
                         env=env, cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    backbone, filename = out.stdout.split()
    assert backbone == 'mmfalcon.FalconNet'
    mim_dir = site / 'mmfalcon' / '.mim'
    assert filename.startswith(str(mim_dir / 'configs'))
    for path in ('configs/ssdlite_falcon_coco.py', 'tools/train.py',
                 'model-index.yml'):
        assert (mim_dir / path).is_file(), path


@pytest.mark.skipif(not osp.isdir(MIM_PATH),
                    reason=f'no mim command line in {MIM_PATH}')
def test_mim_train_runs_the_coco_config(installed, tmp_path, config_path,
                                        single_process_loaders):
    """``mim train mmfalcon ssdlite_falcon_coco.py`` with the installed
    wheel, on a tiny generated set in the layout the config reads
    (data/coco/ under the working directory). Overridden: the demo's model
    size and classes (CPU seconds), the repeat, the batch and the epochs."""
    _, site = installed
    coco = tmp_path / 'data' / 'coco'
    num_train, batch_size = 2, 2
    make_coco_shapes(str(coco), num_train=num_train, num_val=2, seed=2)
    for split in ('train', 'val'):
        os.rename(coco / split, coco / f'{split}2017')
        os.rename(coco / 'annotations' / f'instances_{split}.json',
                  coco / 'annotations' / f'instances_{split}2017.json')
    demo = Config.fromfile(config_path('demo/ssdlite_falcon_shapes.py'))
    classes = '(' + ','.join(demo.metainfo['classes']) + ')'
    demo_model = [
        f'model.backbone.arch={demo.model.backbone.arch}',
        f'model.neck.in_channels={tuple(demo.model.neck.in_channels)}',
        f'model.neck.out_channels={tuple(demo.model.neck.out_channels)}',
        f'model.bbox_head.in_channels='
        f'{tuple(demo.model.bbox_head.in_channels)}',
        f'model.bbox_head.num_classes={demo.model.bbox_head.num_classes}',
        f'train_dataloader.dataset.dataset.metainfo.classes={classes}',
        f'val_dataloader.dataset.metainfo.classes={classes}',
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), MIM_PATH]))
    out = subprocess.run(
        [sys.executable, '-W', 'ignore', '-m', 'mim', 'train', 'mmfalcon',
         'ssdlite_falcon_coco.py', '--work-dir', 'work', '--cfg-options',
         *demo_model, 'train_cfg.max_epochs=1',
         'train_dataloader.dataset.times=1',
         f'train_dataloader.batch_size={batch_size}',
         f'val_dataloader.batch_size={batch_size}', *single_process_loaders],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    command = next(line for line in out.stdout.splitlines()
                   if line.startswith('Training command is'))
    mim_dir = str(site / 'mmfalcon' / '.mim')
    assert f'{mim_dir}/tools/train.py' in command
    assert f'{mim_dir}/configs/ssdlite_falcon_coco.py' in command
    meta = torch.load(tmp_path / 'work' / 'epoch_1.pth', map_location='cpu',
                      weights_only=False)['meta']
    assert (meta['epoch'], meta['iter']) == (1, num_train // batch_size)
    assert tuple(meta['dataset_meta']['classes']) == tuple(
        demo.metainfo['classes'])
