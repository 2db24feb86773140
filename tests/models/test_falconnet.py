import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

import mmfalcon
from mmfalcon.models import FalconNet, RefCO, RepSO, fuse_model

TINY = dict(depths=[1, 1, 2, 1], widths=[16, 32, 64, 128])
STRIDES = (4, 8, 16, 32, 32)


@pytest.mark.parametrize('size', [(320, 320), (333, 517)])
def test_out_indices_shapes_and_strides(size):
    model = FalconNet(arch=TINY, out_indices=(0, 1, 2, 3, 4),
                      head_channels=96).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    channels = TINY['widths'] + [96]
    assert len(outs) == 5
    for out, c, s in zip(outs, channels, STRIDES):
        assert out.shape[:2] == (1, c)
        # stride-2 layers round odd sizes up or down, never by a whole step
        assert abs(out.shape[2] - size[0] / s) < 1
        assert abs(out.shape[3] - size[1] / s) < 1


def test_subset_of_out_indices_and_no_unused_head():
    model = FalconNet(arch=TINY, out_indices=(2, 3))
    assert model.head_conv is None
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128]


def test_paper_default_arch_uses_falcon_layers():
    model = FalconNet()
    assert model.arch == dict(depths=[3, 3, 9, 3], widths=[32, 64, 128, 256])
    assert sum(isinstance(m, RepSO) for m in model.modules()) == 18
    assert sum(isinstance(m, RefCO) for m in model.modules()) == 36


@pytest.mark.parametrize('block', [
    'MetaLightBlock', 'InvertedResidual', 'FasterNetBlock', 'SandglassBlock',
    dict(type='InvertedResidual', expand_ratio=6),
    dict(type='SandglassBlock', reduction_ratio=2)
])
def test_lightnet_hosts_other_blocks(block, randomize_bn):
    model = FalconNet(arch=TINY, block=block, out_indices=(1, 3))
    randomize_bn(model).eval()
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        before = model(x)
        mmfalcon.fuse_model(model)
        after = model(x)
    for b, a in zip(before, after):
        assert (b - a).abs().max().item() < 1e-4


@pytest.mark.parametrize('size', [(320, 320), (333, 517)])
def test_fused_equals_unfused(size, randomize_bn):
    model = randomize_bn(FalconNet(arch='tiny', out_indices=(0, 1, 2, 3,
                                                             4))).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        before = model(x)
        model.switch_to_deploy()
        after = model(x)
    assert mmfalcon.is_fused(model)
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    for b, a in zip(before, after):
        err = (b - a).abs().max().item()
        assert err < 1e-4, err


def test_paper_size_fusion_exact_in_float64(randomize_bn):
    """Random BN statistics drive paper-size activations to 1e4-1e5, where
    float32 rounding alone exceeds 1e-4; float64 shows the fold is exact."""
    torch.manual_seed(0)
    model = randomize_bn(FalconNet(arch='base', out_indices=(0, 1, 2, 3, 4),
                                   stem_shortcut='before_act'))
    model = model.double().eval()
    x = torch.randn(1, 3, 96, 128, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        fuse_model(model)
        after = model(x)
    for b, a in zip(before, after):
        err = (b - a).abs().max().item()
        scale = b.abs().max().item()
        print(f'base float64 fused vs unfused: {err:.2e} (max |y| '
              f'{scale:.2e})')
        assert err < 1e-8 * max(scale, 1.), (err, scale)


@pytest.mark.parametrize('shortcut', ['after_act', 'before_act', None])
def test_stem_shortcut_fusion_exact(shortcut, randomize_bn):
    model = FalconNet(arch='tiny', stem_shortcut=shortcut, out_indices=0)
    randomize_bn(model).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        before = model(x)[0]
        fuse_model(model)
        assert (before - model(x)[0]).abs().max().item() < 1e-4
    # same weights, three positions: three different functions
    state = randomize_bn(FalconNet(arch='tiny', out_indices=0)).state_dict()
    outs = []
    for position in ('after_act', 'before_act', None):
        other = FalconNet(arch='tiny', stem_shortcut=position, out_indices=0)
        other.load_state_dict(state)
        with torch.no_grad():
            outs.append(other.eval()(x)[0])
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


@pytest.mark.parametrize('out_indices,channels', [
    ((0, 1, 2, 3, 4), (16, 32, 64, 128, 96)), ((3, 1), (32, 128)),
    (4, (96, )), ((2, 2), (64, ))
])
def test_out_channels_match_forward(out_indices, channels):
    model = FalconNet(arch='tiny', out_indices=out_indices,
                      head_channels=96).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert model.out_channels == channels
    assert tuple(o.shape[1] for o in outs) == channels


def test_parse_arch_returns_a_copy():
    model = FalconNet(arch='base')
    model.arch['depths'][0] = 99
    assert FalconNet.arch_zoo['base']['depths'] == [3, 3, 9, 3]
    custom = dict(depths=[1, 1, 1, 1], widths=[8, 16, 32, 64])
    FalconNet(arch=custom).arch['widths'][0] = 99
    assert custom['widths'][0] == 8


def test_deploy_build_matches_fused_checkpoint(randomize_bn):
    model = randomize_bn(FalconNet(arch='tiny', out_indices=(2, 3))).eval()
    mmfalcon.fuse_model(model)
    deployed = FalconNet(arch='tiny', out_indices=(2, 3), deploy=True).eval()
    assert not any(isinstance(m, _BatchNorm) for m in deployed.modules())
    deployed.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model(x), deployed(x)):
            assert torch.allclose(a, b)


def test_switch_to_deploy_idempotent():
    model = FalconNet(arch='tiny').eval()
    mmfalcon.fuse_model(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mmfalcon.fuse_model(model)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_fused_checkpoint_into_an_unfused_model():
    fused = FalconNet(arch='tiny', deploy=True)
    # a backbone takes the form of a fused checkpoint
    model = FalconNet(arch='tiny')
    model.load_state_dict(fused.state_dict())
    assert model.deploy
    # a layer loaded on its own cannot: it names the way
    prefix = 'stem.conv.'
    layer_state = {key[len(prefix):]: value
                   for key, value in fused.state_dict().items()
                   if key.startswith(prefix)}
    with pytest.raises(RuntimeError, match='fused .deploy. form'):
        FalconNet(arch='tiny').stem.conv.load_state_dict(layer_state)
    # and a fused model has no branches to take a training checkpoint
    with pytest.raises(RuntimeError, match='unfused .training. form'):
        fused.load_state_dict(FalconNet(arch='tiny').state_dict())


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "Unknown arch 'huge'.*'base'"),
    (dict(arch=dict(depths=[1, 1, 1])), 'Custom arch'),
    (dict(arch=dict(depths=[1, 1, 1], widths=[8, 8, 8, 8])), r"'depths'"),
    (dict(out_indices=(5, )),
     r'out_indices contains 5, out of range.*0\.\.4'),
    (dict(frozen_stages=5), 'frozen_stages=5 out of range'),
    (dict(block='Sandglass'), "Unknown block 'Sandglass'"),
    (dict(stem_shortcut='pw'), r"stem_shortcut='pw'.*'after_act'"),
    (dict(norm_cfg=dict(type='GN', num_groups=8)),
     r"FalconNet needs a batch norm.*norm_cfg=\{'type': 'GN'"),
    (dict(norm_cfg=dict(type='LN')), r"'LN'"),
    (dict(block=dict(type='SandglassBlock', reduction_ratio=64)),
     'reduction_ratio=64 leaves no bottleneck channel for 32'),
    (dict(block=dict(type='MetaLightBlock', fold_batch_stats=False)),
     r"block='MetaLightBlock' sets \['fold_batch_stats'\], which FalconNet "
     'passes to every block itself'),
    (dict(block=dict(type='InvertedResidual', norm_cfg=dict(type='BN'))),
     r"sets \['norm_cfg'\]"),
    (dict(sfconv_impl='gemm'),
     r"SF-Conv impl='gemm': expected one of \('matmul', 'conv'\)"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FalconNet(**kwargs)


def test_frozen_stages_and_norm_eval():
    model = FalconNet(arch='tiny', frozen_stages=2, norm_eval=True)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1]]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert all(not m.training for m in model.modules()
               if isinstance(m, _BatchNorm))
    model = FalconNet(arch='tiny', frozen_stages=0).train()
    assert not model.stem.training
    assert model.stages[0].training


def test_mmseg_style_pretrained_becomes_init_cfg():
    model = FalconNet(arch='tiny', pretrained='ckpt.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='ckpt.pth')


@pytest.mark.parametrize('out_stride,strides', [(16, (4, 8, 16, 16)),
                                                (8, (4, 8, 8, 8))])
def test_out_stride_dilates_instead_of_downsampling(out_stride, strides,
                                                    randomize_bn):
    model = FalconNet(arch='tiny', out_indices=(0, 1, 2, 3),
                      out_stride=out_stride)
    randomize_bn(model).eval()
    x = torch.randn(1, 3, 96, 131)
    with torch.no_grad():
        before = model(x)
        model.switch_to_deploy()
        after = model(x)
    for out, s in zip(before, strides):
        assert out.shape[2] == -(-96 // s)  # ceil: the stem rounds up
    for b, a in zip(before, after):
        assert (b - a).abs().max().item() < 1e-4
    last_repso = model.stages[3][-1].spatial_op.fused
    assert last_repso.dilation == (32 // out_stride, ) * 2
    # weights are interchangeable with the stride-32 model
    FalconNet(arch='tiny', deploy=True).load_state_dict(model.state_dict())


def test_bad_out_stride_is_named():
    with pytest.raises(ValueError, match='out_stride=4'):
        FalconNet(out_stride=4)


def test_infeasible_sfconv_width_falls_back_to_dense_conv():
    from mmfalcon.models.layers import ConvNorm
    # width 7 -> 28: no window K with K | 7 and 2 | K exists
    model = FalconNet(arch=dict(depths=[1, 1, 1, 1], widths=[7, 14, 28, 56]))
    block = model.stages[0][0]
    assert isinstance(block.channel_op1, ConvNorm)
    assert block.channel_op1.conv.weight.shape == (28, 7, 1, 1)
    assert isinstance(model.stages[1][-1].channel_op1, RefCO)
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 56, 2, 2)
