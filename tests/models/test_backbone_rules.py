"""What FalconNet and ParC-Net share through ``FusableBackbone``: one rule
for ``out_indices`` and ``frozen_stages``, and convs built from
``conv_cfg`` (mmcv's builders) with unchanged state-dict keys."""
from functools import partial

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS

from mmfalcon.models import FalconNet, ParCNet, fuse_model
from mmfalcon.models.layers import ConvNorm, RefCO, RepSO, SFConv

PARC_TINY = dict(stem_channels=8, mv2_layers=[[8, 1, 1], [16, 1, 2]],
                 parc_layers=[[16, 16, 32, 1, 8], [24, 24, 48, 1, 4]],
                 fusion='concat', head_channels=32)
# (backbone, its outputs, its modules in freezing order)
BACKBONES = {
    'FalconNet': (
        lambda **kw: FalconNet(arch='tiny', **kw),
        ('stages.0', 'stages.1', 'stages.2', 'stages.3', 'head_conv'),
        ('stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3')),
    'ParCNet': (
        lambda **kw: ParCNet(arch=PARC_TINY, **kw),
        ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'conv_1x1_exp'),
        ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'conv_1x1_exp')),
}


@pytest.fixture(params=sorted(BACKBONES))
def backbone(request):
    return BACKBONES[request.param]


@pytest.mark.parametrize('bad', ['num', '-num-1', 'float'])
def test_out_of_range_out_indices_name_value_and_range(backbone, bad):
    build, outputs, _ = backbone
    num = len(outputs)
    value = {'num': num, '-num-1': -num - 1, 'float': 1.0}[bad]
    with pytest.raises(ValueError, match=(
            rf'out_indices contains {value!r}, out of range: expected ints '
            rf'in 0\.\.{num - 1} \(0 {outputs[0]}, .*{num - 1} '
            rf'{outputs[-1]}\) or -{num}\.\.-1')):
        build(out_indices=(0, value))


def test_empty_out_indices_are_refused(backbone):
    build, outputs, _ = backbone
    with pytest.raises(ValueError, match=r'out_indices=\(\): expected ints'
                       rf' in 0\.\.{len(outputs) - 1}.*at least one'):
        build(out_indices=())


def test_negative_out_indices_count_from_the_end(backbone):
    build, outputs, _ = backbone
    num = len(outputs)
    model = build(out_indices=(-1, 1, -num, 1 - num))
    assert model.out_indices == (0, 1, num - 1)
    assert build(out_indices=-2).out_indices == (num - 2, )
    # the last output (the head conv) is built and returned
    outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert len(outs) == 3
    assert outs[-1].shape[1] == model.out_channels[-1]


@pytest.mark.parametrize('bad', ['-2', 'num_stages', 'float'])
def test_out_of_range_frozen_stages_name_value_and_range(backbone, bad):
    build, _, stages = backbone
    last = len(stages) - 1
    value = {'-2': -2, 'num_stages': last + 1, 'float': 0.5}[bad]
    with pytest.raises(ValueError, match=(
            rf'frozen_stages={value!r} out of range: expected -1\.\.{last} '
            rf'\(-1 freezes nothing, k the first k \+ 1 of '
            rf"{', '.join(stages)}\)")):
        build(frozen_stages=value)


@pytest.mark.parametrize('frozen', [-1, 0, 'last'])
def test_frozen_stages_freeze_the_first_k_plus_one(backbone, frozen):
    build, _, stages = backbone
    frozen = len(stages) - 1 if frozen == 'last' else frozen
    model = build(out_indices=-1, frozen_stages=frozen).train()
    for i, name in enumerate(stages):
        module = model.get_submodule(name)
        params = list(module.parameters())
        assert params
        assert all(p.requires_grad != (i <= frozen) for p in params), name
        assert module.training != (i <= frozen), name


class _RegisteredConv(nn.Conv2d):
    """A conv type from a config: nn.Conv2d's forward, its own init."""

    def reset_parameters(self):
        nn.init.constant_(self.weight, 0.01)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


@pytest.fixture
def registered_conv():
    """``_RegisteredConv`` under a test-only name in mmengine's root
    registry (where mmcv's ``build_conv_layer`` looks), removed after."""
    name = 'MmfalconTestConv'
    MODELS.register_module(name=name, module=_RegisteredConv)
    yield name
    MODELS._module_dict.pop(name)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# (backbone, the name endings of the convs that keep conv_cfg's type when
# fused: those with no norm after them, nothing to fold)
CONV_CFG_BACKBONES = {
    **{
        f'FalconNet-{block}': (
            partial(FalconNet, arch='tiny', block=block,
                    out_indices=(2, 3, 4)),
            # FasterNet's partial conv and projection
            ('partial_conv', 'project') if block == 'FasterNetBlock' else ())
        for block in ('MetaLightBlock', 'InvertedResidual', 'FasterNetBlock',
                      'SandglassBlock')
    },
    # the ParC layers' 1x1 projection and their blocks' second FFN conv
    'ParCNet': (partial(ParCNet, arch=PARC_TINY, out_indices=(4, 5)),
                ('proj', 'ffn.2')),
}


@pytest.mark.parametrize('case', list(CONV_CFG_BACKBONES))
def test_conv_cfg_builds_every_conv(registered_conv, case, randomize_bn):
    build, kept = CONV_CFG_BACKBONES[case]
    model = build(conv_cfg=dict(type=registered_conv)).eval()
    convs = _convs(model)
    assert convs and all(type(m) is _RegisteredConv for m in convs)
    reference = build()
    assert not any(isinstance(m, _RegisteredConv)
                   for m in reference.modules())
    # same keys and shapes: checkpoints load either way
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
    reference.load_state_dict(randomize_bn(model).state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        fuse_model(model)
        after = model(x)
    for b, a in zip(before, after):
        assert (b - a).abs().max().item() < 1e-4 * b.abs().max().item()
    # the fused convs are plain nn.Conv2d; only the unfused keep the type
    left = [name for name, m in model.named_modules()
            if type(m) is _RegisteredConv]
    assert all(name.endswith(kept) for name in left), left
    assert bool(left) == bool(kept)
    fused_reference = fuse_model(reference.eval())
    assert model.state_dict().keys() == fused_reference.state_dict().keys()


def test_in_channels(randomize_bn):
    model = randomize_bn(FalconNet(arch='tiny', in_channels=1)).eval()
    assert model.stem.conv.conv.weight.shape[1] == 1
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        (before, ) = model(x)
        fuse_model(model)
        (after, ) = model(x)
    assert (before - after).abs().max().item() < 1e-4
    assert model.stem.conv.fused.weight.shape[1] == 1
    parc = ParCNet(arch=PARC_TINY, in_channels=4)
    assert parc.stem.conv.weight.shape[1] == 4


@pytest.mark.parametrize('conv_cfg,built', [
    (dict(type='Conv2dAdaptivePadding'), "Conv2dAdaptivePadding "
     r"\(padding_mode='zeros'\)"),
    (dict(type='Conv2d', padding_mode='reflect'),
     r"Conv2d \(padding_mode='reflect'\)"),
])
@pytest.mark.parametrize('build', [
    lambda cfg: ConvNorm(4, 8, 3, conv_cfg=cfg),
    lambda cfg: RepSO(4, conv_cfg=cfg),
    lambda cfg: SFConv(16, 32, conv_cfg=cfg),
    lambda cfg: RefCO(16, 32, conv_cfg=cfg),
    lambda cfg: FalconNet(arch='tiny', conv_cfg=cfg),
    lambda cfg: ParCNet(arch=PARC_TINY, conv_cfg=cfg),
])
def test_conv_types_fusion_cannot_fold_are_refused(conv_cfg, built, build):
    """A conv that pads itself (or not with zeros) computes another
    function than the zero-padded nn.Conv2d fusion folds it into."""
    with pytest.raises(ValueError, match=(
            rf'conv_cfg=.* builds {built}, which fusion cannot fold.*'
            r"Expected a conv type that runs nn.Conv2d's own forward")):
        build(conv_cfg)
