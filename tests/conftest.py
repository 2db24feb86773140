"""Shared fixtures. Tests take what they need as fixture arguments; nothing
imports this module.

Slow tests (training, distributed runs, ONNX export, benchmarks) carry
``@pytest.mark.slow``: ``pytest -m "not slow" tests`` is the unit lane.
"""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmfalcon.fileio import TRUST_ENV

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
torch.set_num_threads(2)

# The official ParC-Net-S fixture lives in shared/reference, inside the
# checkout or beside it (CI: <clone>/../shared). Where that directory exists
# the tests that need the fixture run, and fail if the file is missing.
_PARCNET_REFERENCE = next(
    (d for d in (osp.join(root, 'shared', 'reference')
                 for root in (ROOT, osp.dirname(ROOT))) if osp.isdir(d)),
    None)
_PARCNET_FIXTURE = None if _PARCNET_REFERENCE is None else osp.join(
    _PARCNET_REFERENCE, 'parcnet_s_official.pt')


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: trains, runs processes or exports (deselect with '
        '-m "not slow")')


@torch.no_grad()
def randomize_bn_stats(model, seed=0):
    """Give every BN non-trivial statistics so a BN fold is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


@pytest.fixture
def randomize_bn():
    return randomize_bn_stats


@pytest.fixture(scope='session')
def repo_root():
    return ROOT


@pytest.fixture(scope='session')
def config_path():
    """``config_path('demo/x.py')``: the path of a config of this repo."""
    return lambda name: osp.join(ROOT, 'configs', name)


@pytest.fixture(scope='session')
def parcnet_fixture():
    """The official ParC-Net-S checkpoint: skips the test only where there
    is no shared/reference directory, fails it where the file is missing."""
    if _PARCNET_FIXTURE is None:
        pytest.skip('no shared/reference directory inside or beside the '
                    'checkout')
    if not osp.isfile(_PARCNET_FIXTURE):
        pytest.fail(f'{_PARCNET_REFERENCE} exists but has no '
                    f'{osp.basename(_PARCNET_FIXTURE)}', pytrace=False)
    return _PARCNET_FIXTURE


@pytest.fixture(scope='session')
def single_process_loaders():
    """--cfg-options that make a demo config load data in the main
    process."""
    return [
        f'{loader}.{key}'
        for loader in ('train_dataloader', 'val_dataloader',
                       'test_dataloader')
        for key in ('num_workers=0', 'persistent_workers=False')
    ]


@pytest.fixture(scope='session')
def run_tool():
    """``run_tool('train.py', *args, cwd=, env=, ok=True)`` runs
    ``tools/train.py`` in a fresh interpreter; returns the completed
    process with ``.log`` (stdout + stderr). ``ok=True`` fails the test on
    a non-zero exit, ``ok=False`` on a zero one; ``ok=None`` checks
    nothing."""

    def run(tool, *args, cwd=None, env=None, ok=True, timeout=600,
            tools_dir=osp.join(ROOT, 'tools')):
        out = subprocess.run(
            [sys.executable, osp.join(tools_dir, tool), *map(str, args)],
            cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout)
        out.log = out.stdout + out.stderr
        if ok is not None and (out.returncode == 0) != ok:
            pytest.fail(f'{tool} exited with {out.returncode}:\n'
                        f'{out.log[-4000:]}')
        return out

    return run


class _Payload:
    """Unpickling it creates ``marker``: stands in for any command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture
def crafted_checkpoint(tmp_path):
    """A checkpoint that looks like a FalconNet-tiny one and runs a command
    when unpickled; returns its path and the file the command creates."""
    from mmfalcon.models import FalconNet
    path, marker = tmp_path / 'crafted.pth', tmp_path / 'payload_ran'
    torch.save(dict(state_dict=FalconNet('tiny').state_dict(),
                    meta=_Payload(marker)), path)
    return str(path), marker


@pytest.fixture
def clean_env(monkeypatch):
    """No opt-in to trusted checkpoints from the caller's environment."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    return dict(os.environ)
