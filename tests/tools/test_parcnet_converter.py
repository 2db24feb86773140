import os.path as osp
import re
from collections import OrderedDict

import pytest
import torch

from mmfalcon.converters.parcnet_official import (
    convert_official_parcnet, detect_parcnet_arch, drop_official_extras,
    unwrap_official_checkpoint)
from mmfalcon.fileio import load_checkpoint_file
from mmfalcon.models.backbones.parcnet import ParCNet


@pytest.fixture(scope='module')
def official_sd(parcnet_fixture):
    # the official file loads without opting in to code execution
    return load_checkpoint_file(parcnet_fixture)['state_dict']


def _as_official_xs(state_dict):
    """Reshape the S state_dict into the key/shape layout of official XS
    (widths 96/128/160, 2/3/2 ParC blocks), enough for arch detection."""
    widths, blocks = {3: 96, 4: 128, 5: 160}, {3: 2, 4: 3, 5: 2}
    s_blocks = {3: 2, 4: 4, 5: 3}
    out = OrderedDict()
    for key, value in state_dict.items():
        m = re.match(r'^layer_(\d)\.1\.spatial_global_rep\.(\d+)\.(.+)$', key)
        if m:
            stage, index = int(m[1]), int(m[2])
            if index == s_blocks[stage]:  # final BN moves to the new index
                key = f'layer_{stage}.1.spatial_global_rep.' \
                      f'{blocks[stage]}.{m[3]}'
            elif index >= blocks[stage]:
                continue
        m = re.match(r'^layer_(\d)\.1\.dim_adaptive\.0\.block\.conv\.weight$',
                     key)
        if m:
            value = value[:widths[int(m[1])]]
        out[key] = value
    return out


def test_convert_fixture_matches_model_keys(official_sd):
    converted, unmapped = convert_official_parcnet(official_sd, arch='s')
    assert unmapped == []
    # 557 official keys - 18 residual aliases - 2 classifier keys
    assert len(official_sd) == 557 and len(converted) == 537
    model = ParCNet('s', out_indices=(4, 5, 6))
    model.load_state_dict(converted, strict=True)
    assert torch.equal(
        converted['layer3.1.blocks.0.mixer_wh.1.kernel'],
        official_sd['layer_3.1.spatial_global_rep.0.meta_kernel_2_H'])
    assert torch.equal(
        converted['layer4.1.channel_adaptive.pre_norm.running_var'],
        official_sd['layer_4.1.spatial_global_rep.4.running_var'])


def test_extras_and_wrappers(official_sd):
    kept, dropped = drop_official_extras(official_sd)
    assert len(dropped['residual']) == 18
    assert dropped['classifier'] == ['classifier.fc.weight',
                                     'classifier.fc.bias']
    assert not any(k.startswith(('residual.', 'classifier.')) for k in kept)
    wrapped = {'model': {'module.' + k: v for k, v in official_sd.items()}}
    assert list(unwrap_official_checkpoint(wrapped)) == list(official_sd)

    broken = OrderedDict(official_sd)
    key = 'residual.block.red_1x1.block.conv.weight'
    broken[key] = broken[key] + 1
    with pytest.raises(ValueError, match='layer_5.0.block.red_1x1'):
        drop_official_extras(broken)


def test_arch_mismatch(official_sd):
    with pytest.raises(ValueError, match=r"ParC-Net-S.*'xs' was expected"):
        convert_official_parcnet(official_sd, arch='xs')
    xs_like = _as_official_xs(official_sd)
    assert detect_parcnet_arch(drop_official_extras(xs_like)[0]) == 'xs'
    with pytest.raises(ValueError, match=r"ParC-Net-XS.*'s' was expected"):
        convert_official_parcnet(xs_like, arch='s')
    weird = {k: v for k, v in official_sd.items()
             if 'spatial_global_rep.3.' not in k}
    with pytest.raises(ValueError, match='matches no ParCNet arch'):
        detect_parcnet_arch(weird)


def test_cli(tmp_path, parcnet_fixture, run_tool, clean_env):
    cli = 'model_converters/parcnet_official.py'
    out = tmp_path / 'sub' / 'parcnet_s.pth'
    result = run_tool(cli, parcnet_fixture, out, env=clean_env)
    assert 'Dropped the classifier' in result.stdout
    assert "Dropped 18 'residual.*' keys" in result.stdout
    assert 'could not be mapped' not in result.stdout
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint['meta']['arch'] == 's'
    # the file name only, no local path
    assert checkpoint['meta']['source_checkpoint'] == osp.basename(
        parcnet_fixture)
    ParCNet('s').load_state_dict(checkpoint['state_dict'], strict=True)

    result = run_tool(cli, parcnet_fixture, tmp_path / 'x.pth', '--arch',
                      'xs', env=clean_env, ok=False)
    assert "'xs' was expected" in result.stderr
