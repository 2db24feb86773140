"""tools/analysis/gpu_check.py on the CPU: every table is printed, the
exactness rows pass, and a broken fold is reported and fails the run."""
import functools
import importlib.util
import os.path as osp
import re
import sys
import types

import pytest
import torch
import torch.nn as nn

from mmfalcon.models.layers import RefCO, RepSO, repso

TOOL = osp.join(osp.dirname(__file__), '..', '..', 'tools', 'analysis',
                'gpu_check.py')


@pytest.fixture(scope='module')
def gpu_check():
    spec = importlib.util.spec_from_file_location('gpu_check', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def broken_fold(monkeypatch):
    """RepSO's folded BNs shift their outputs by 1e-3 (the branches'
    don't): a fold that is wrong by a little."""
    real = repso.batch_scale_shift

    def shifted(*args, **kwargs):
        scale, shift = real(*args, **kwargs)
        return scale, shift + 1e-3

    monkeypatch.setattr(repso, 'batch_scale_shift', shifted)


def table(text, title):
    """The rows (lists of cells) of the markdown table under ``title``."""
    section = text.split(title, 1)[1].split('\n## ', 1)[0]
    return [[cell.strip() for cell in line.strip().strip('|').split('|')]
            for line in section.splitlines()
            if line.startswith('| ') and not line.startswith('| case')
            and not line.startswith('| model')]


SMALL_CASES = [('RepSO 8 ch', functools.partial(RepSO, 8), (2, 8, 6, 7)),
               ('RefCO 16 -> 32', functools.partial(RefCO, 16, 32),
                (2, 16, 5, 5))]


def test_exactness_rows_pass_on_the_folded_layers(gpu_check):
    rows, passed = gpu_check.exactness_rows(torch.device('cpu'), SMALL_CASES)
    assert passed, rows
    assert [row[:2] for row in rows] == [
        [name, precision] for name, _, _ in SMALL_CASES
        for precision in ('float64', 'float32', 'AMP float16',
                          'AMP bfloat16')]
    assert all(row[-1] == 'PASS' for row in rows)


def test_exactness_rows_catch_a_broken_fold(gpu_check, broken_fold):
    rows, passed = gpu_check.exactness_rows(torch.device('cpu'), SMALL_CASES)
    assert not passed
    results = {(row[0], row[1]): row[-1] for row in rows}
    # float64 and float32 see a 1e-3 shift; RefCO is not broken
    assert results[('RepSO 8 ch', 'float64')] == 'FAIL'
    assert results[('RepSO 8 ch', 'float32')] == 'FAIL'
    assert all(results[('RefCO 16 -> 32', p)] == 'PASS'
               for p in ('float64', 'float32'))


@pytest.mark.slow
def test_quick_cpu_run_prints_every_table(run_tool):
    out = run_tool('analysis/gpu_check.py', '--device', 'cpu', '--quick')
    assert re.search(r'^# gpu_check on .+ \(cpu\)$', out.stdout, re.M)
    exact = table(out.stdout, '## Folded vs branch by branch')
    cases = ('FalconNet-tiny', 'RepSO 96 ch', 'RepSO 96 ch, dilation 2',
             'RefCO 64 -> 256', 'RefCO 256 -> 64')
    assert [(row[0], row[1]) for row in exact] == [
        (case, p) for case in cases
        for p in ('float64', 'float32', 'AMP float16', 'AMP bfloat16')]
    assert all(row[-1] == 'PASS' for row in exact), out.stdout
    train = {row[0]: row for row in table(out.stdout, '## Training step')}
    for name in ('FalconNet-base, folded', 'FalconNet-base, branch by branch',
                 'ParC-Net-S'):
        assert float(train[name][1]) > 0, train[name]  # median ms
    assert 'x folded' in train['FalconNet-base, branch by branch'][4]
    for peer in ('MobileNetV2', 'MobileViT-S'):  # not importable here
        assert train[peer][-1].startswith('unavailable') or float(
            train[peer][1]) > 0, train[peer]
    infer = {row[0]: row for row in table(out.stdout, '## Inference')}
    for name in ('FalconNet-base', 'ParC-Net-S'):
        for batch in (1, 2):
            row = infer[f'{name} @ batch {batch}']
            assert float(row[1]) > 0 and row[-1] == 'fused', row
    assert 'Exactness: all rows PASS' in out.stdout


@pytest.mark.slow
def test_broken_fold_fails_the_run(gpu_check, broken_fold, capsys):
    status = gpu_check.main(['--device', 'cpu', '--quick', '--sections',
                             'exactness'])
    out = capsys.readouterr().out
    assert status == 1
    assert 'Exactness: FAIL' in out
    rows = table(out, '## Folded vs branch by branch')
    assert ['FalconNet-tiny', 'float64'] in [row[:2] for row in rows
                                             if row[-1] == 'FAIL']


class _StubFeatures(nn.Module):
    """A feature extractor with timm's ``feature_info.reduction()``."""

    def __init__(self, out_indices=None):
        super().__init__()
        self.convs = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(3 if i == 0 else 4, 4, 3, 2, 1),
                          nn.BatchNorm2d(4), nn.ReLU()) for i in range(5)])
        self.out_indices = out_indices or tuple(range(5))
        self.feature_info = types.SimpleNamespace(
            reduction=lambda: [2, 4, 8, 16, 32])

    def forward(self, x):
        outs = []
        for conv in self.convs:
            x = conv(x)
            outs.append(x)
        return [outs[i] for i in self.out_indices]


@pytest.fixture
def stub_peers(monkeypatch):
    """torchvision and timm stand-ins (neither loads with this CPU torch)
    that build small conv nets, so the peers' rows and ratios run."""
    torchvision = types.ModuleType('torchvision')
    torchvision.__version__ = 'stub'
    torchvision.models = types.SimpleNamespace(
        mobilenet_v2=lambda weights: types.SimpleNamespace(
            features=_StubFeatures().convs))
    timm = types.ModuleType('timm')
    timm.__version__ = 'stub'
    timm.create_model = lambda name, pretrained, features_only, **kwargs: (
        _StubFeatures(kwargs.get('out_indices')))
    monkeypatch.setitem(sys.modules, 'torchvision', torchvision)
    monkeypatch.setitem(sys.modules, 'timm', timm)


@pytest.mark.slow
def test_peer_rows_give_ratios_and_targets(gpu_check, stub_peers, capsys):
    status = gpu_check.main(['--device', 'cpu', '--sections', 'train',
                             'inference', '--batch', '2', '--size', '64',
                             '--runs', '3', '--warmup', '0'])
    out = capsys.readouterr().out
    assert status == 0, out
    train = {row[0]: row for row in table(out, '## Training step')}
    assert re.fullmatch(r'x \d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)',
                        train['FalconNet-base, folded'][4])
    assert re.fullmatch(r'<= 1\.5 x MobileNetV2: (met|not met)',
                        train['FalconNet-base, folded'][5])
    assert train['ParC-Net-S'][4].startswith('x ')
    assert train['MobileViT-S'][-1] == 'timm stub, features (3, 4)'
    infer = {row[0]: row for row in table(out, '## Inference')}
    assert infer['FalconNet-base @ batch 1'][4].startswith('x ')
    # the target is stated at batch 64 only
    assert infer['FalconNet-base @ batch 2'][5] == '-'
    assert infer['MobileNetV2 @ batch 1'][-1].endswith(
        '5 of 5 BNs folded (fx)')
