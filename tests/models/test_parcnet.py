import math
import warnings

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmfalcon.models import fuse_model
from mmfalcon.models.backbones.parcnet import ParCNet
from mmfalcon.converters.parcnet_official import convert_official_parcnet
from mmfalcon.models.layers.parc import (FFT_MIN_LENGTH, ParC, ParCBlock,
                                        ParCFused, circular_conv)

S_CHANNELS = (16, 32, 64, 96, 128, 160, 640)
S_STRIDES = (2, 2, 4, 8, 16, 32, 32)
ALL = tuple(range(7))
TINY = dict(stem_channels=8, mv2_layers=[[8, 1, 1], [16, 1, 2]],
            parc_layers=[[16, 16, 32, 1, 8], [24, 24, 48, 2, 4]],
            fusion='concat', head_channels=32)


def _size_at(n, stride):
    # each stride-2 3x3 conv with padding 1 maps n to ceil(n / 2)
    for _ in range(int(math.log2(stride))):
        n = (n + 1) // 2
    return n


def _max_err(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope='module')
def official(parcnet_fixture):
    return torch.load(parcnet_fixture, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def converted_s(official):
    state_dict, unmapped = convert_official_parcnet(official['state_dict'])
    assert unmapped == []
    return state_dict


_BN_RANDOM_S = []


@pytest.fixture
def bn_random_s(randomize_bn):
    """ParCNet-S with all outputs, random BN stats, eval, and its outputs
    (built once per module)."""
    if not _BN_RANDOM_S:
        torch.manual_seed(0)
        model = randomize_bn(ParCNet('s', out_indices=ALL)).eval()
        inputs = [torch.randn(1, 3, 320, 320), torch.randn(1, 3, 333, 517)]
        with torch.no_grad():
            refs = [model(x) for x in inputs]
        _BN_RANDOM_S.append((model, inputs, refs))
    return _BN_RANDOM_S[0]


@pytest.mark.parametrize('fused', [False, True])
def test_parity_with_official(official, converted_s, fused):
    model = ParCNet('s', out_indices=(3, 4, 5, 6))
    model.load_state_dict(converted_s, strict=True)
    model.eval()
    if fused:
        model.switch_to_deploy()
    names = ('layer3', 'layer4', 'layer5', 'conv_1x1_exp')
    for size in ('x256', 'x320'):
        with torch.no_grad():
            outs = model(official['inputs'][size])
        for name, out in zip(names, outs):
            ref = official['outputs'][size][name]
            assert out.shape == ref.shape
            err = _max_err(out, ref)
            print(f'parity fused={fused} {size} {name}: {err:.3e}')
            assert err < 1e-4, (size, name, err)


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # official totals minus the classifier (640 * 1000 + 1000 for both)
    assert count(ParCNet('s')) == 5_037_088 - 641_000 == 4_396_088
    assert count(ParCNet('xs')) == 2_185_384 - 641_000 == 1_544_384


@pytest.mark.parametrize('size', [(320, 320), (333, 517)])
def test_shapes_and_strides(size):
    model = ParCNet('s', out_indices=ALL).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == 7
    assert model.out_channels == S_CHANNELS
    for out, c, s in zip(outs, S_CHANNELS, S_STRIDES):
        assert out.shape == (1, c, _size_at(size[0], s),
                             _size_at(size[1], s))


@pytest.mark.parametrize('dilate_last,dilation', [(False, 1), (True, 2)])
def test_out_stride_16(dilate_last, dilation):
    """The official code only drops layer5's stride (its MV2 keeps the
    dilation of the layers before it, 1); the dilated form is opt-in."""
    model = ParCNet('s', out_indices=(4, 5, 6), out_stride=16,
                    dilate_last=dilate_last).eval()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            expected = dilation if name.startswith(
                'layer5.0.depthwise') else 1
            assert module.dilation == (expected, expected), name
    assert model.layer5[0].depthwise.conv.stride == (1, 1)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 320, 352))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 20, 22),
                                              (1, 160, 20, 22),
                                              (1, 640, 20, 22)]
    # same weights as the stride-32 model
    model.load_state_dict(ParCNet('s', out_indices=(4, 5, 6)).state_dict())


@pytest.mark.parametrize('out_indices,channels', [((4, 5), (128, 160)),
                                                  ((6, 1), (32, 640)),
                                                  (-2, (160, ))])
def test_out_channels_match_forward(out_indices, channels):
    model = ParCNet(arch='s', out_indices=out_indices).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert model.out_channels == channels
    assert tuple(o.shape[1] for o in outs) == channels


def test_unused_trailing_stages_not_run_nor_trained():
    model = ParCNet(arch=TINY, out_indices=(1, 3))
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [8, 16]
    for name in ('layer4', 'conv_1x1_exp'):
        assert not any(p.requires_grad
                       for p in getattr(model, name).parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert ParCNet(arch=TINY, out_indices=-1).out_indices == (5, )


def test_fused_matches_unfused(bn_random_s):
    model, inputs, refs = bn_random_s
    fused = ParCNet('s', out_indices=ALL).eval()
    fused.load_state_dict(model.state_dict())
    fuse_model(fused)
    assert not any(isinstance(m, _BatchNorm) for m in fused.modules())
    # 320x320, then a second (non-square) size, then 320x320 from the cache
    for i in (0, 1, 0):
        with torch.no_grad():
            outs = fused(inputs[i])
        errs = [_max_err(a, b) for a, b in zip(outs, refs[i])]
        print(f'fused vs unfused {tuple(inputs[i].shape[2:])}: '
              f'{max(errs):.3e}')
        assert max(errs) < 1e-4, errs
    caches = [m._cache for m in fused.modules() if isinstance(m, ParCBlock)]
    assert caches and all(len(c) == 2 for c in caches)


def test_switch_to_deploy_idempotent_and_deploy_build(bn_random_s):
    model, inputs, refs = bn_random_s
    fused = ParCNet('s', out_indices=ALL).eval()
    fused.load_state_dict(model.state_dict())
    fused.switch_to_deploy()
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    fused.switch_to_deploy()
    assert fused.state_dict().keys() == state.keys()
    assert all(torch.equal(fused.state_dict()[k], v)
               for k, v in state.items())
    assert fused.deploy

    built = ParCNet('s', out_indices=ALL, deploy=True).eval()
    assert not any(isinstance(m, _BatchNorm) for m in built.modules())
    built.load_state_dict(state, strict=True)
    with torch.no_grad():
        outs = built(inputs[0])
    assert max(_max_err(a, b) for a, b in zip(outs, refs[0])) < 1e-4

    # an unfused backbone takes the form of a fused checkpoint
    adopted = ParCNet('s', out_indices=ALL).eval()
    adopted.load_state_dict(state)
    assert adopted.deploy
    with torch.no_grad():
        outs = adopted(inputs[0])
    assert max(_max_err(a, b) for a, b in zip(outs, refs[0])) < 1e-4
    with pytest.raises(RuntimeError, match='unfused'):
        ParCNet('s', deploy=True).load_state_dict(model.state_dict())


def test_parc_operator_semantics_and_fix():
    """ParC-H follows the height and ParC-W the width (spec 1 [fix])."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 9)
    for direction, dim in (('H', 2), ('W', 3)):
        parc = ParC(4, 5, direction, use_pe=True).eval()
        length = x.shape[dim]
        out = parc(x)
        assert out.shape == x.shape
        # explicit reference: resize along its own axis, then
        # y[i] = sum_t k[t] * x[(i + t) mod N]
        size = [1, 1]
        size[dim - 2] = length
        kernel = torch.nn.functional.interpolate(
            parc.kernel, size, mode='bilinear', align_corners=True)
        pe_size = list(x.shape[2:])
        pe_size[3 - dim] = 1
        pe = torch.nn.functional.interpolate(
            parc.pe, pe_size, mode='bilinear', align_corners=True)
        xin = x + pe
        ref = sum(kernel.flatten(1)[:, t].view(1, -1, 1, 1) *
                  torch.roll(xin, -t, dims=dim) for t in range(length))
        assert _max_err(out, ref) < 1e-5
        assert _max_err(circular_conv(xin, kernel, dim), ref) < 1e-5


def test_parc_fused_layer_and_cache(randomize_bn):
    torch.manual_seed(0)
    parc = randomize_bn(
        ParC(6, 8, 'W', use_pe=True, norm_cfg=dict(type='BN'))).eval()
    xs = [torch.randn(1, 6, 5, 11), torch.randn(2, 6, 7, 3)]
    with torch.no_grad():
        refs = [parc(x) for x in xs]
        parc.fuse()
        assert not hasattr(parc, 'norm') and not hasattr(parc, 'kernel')
        for x, ref in zip(xs, refs):
            assert _max_err(parc(x), ref) < 1e-5
    assert sorted(parc.fused._cache) == [3, 11]
    parc.train()  # parameters may change while training
    assert len(parc.fused._cache) == 0
    parc.eval()(xs[0])
    assert list(parc.fused._cache) == [11]
    parc.to(torch.float64)  # device / dtype moves drop the cache
    assert len(parc.fused._cache) == 0


@pytest.mark.parametrize('direction', ['H', 'W'])
@pytest.mark.parametrize('length', [7, FFT_MIN_LENGTH])
def test_fused_circular_forms_are_exact(direction, length):
    """The fused ParC's circulant matmul (short axes) and FFT product (from
    FFT_MIN_LENGTH on) equal the concatenate-and-convolve reference to
    float64 rounding; a tracer at any length gets the matmul form."""
    torch.manual_seed(0)
    fused = ParCFused(3, 5, direction, with_scale=True, with_bias=True)
    for param in fused.parameters():
        torch.nn.init.normal_(param)
    fused = fused.double().eval()
    dim = 2 if direction == 'H' else 3
    shape = [2, 3, 4, 4]
    shape[dim] = length
    x = torch.randn(shape, dtype=torch.float64)
    bias = fused.instance(length)[1]  # circular_conv of the bias source
    kernel = torch.nn.functional.interpolate(
        fused.kernel, [length, 1] if dim == 2 else [1, length],
        mode='bilinear', align_corners=True) * fused.scale
    ref = circular_conv(x, kernel, dim) + bias
    with torch.no_grad():
        out = fused(x)
        assert fused._cache.get(length)[0].is_complex() == (
            length >= FFT_MIN_LENGTH)
        traced = torch.jit.trace(fused, x, check_trace=False)
    assert _max_err(out, ref) < 1e-12 * ref.abs().max().item()
    assert 'fft' not in str(traced.inlined_graph)
    assert _max_err(traced(x), ref) < 1e-12 * ref.abs().max().item()


def test_cached_kernels_are_constants_of_a_trace(randomize_bn):
    """Export path: a run at the export shape caches the resized kernels, a
    tracer then records them as constants; traced uncached, the resize is
    recorded as ops and nothing is cached."""
    torch.manual_seed(0)
    parc = randomize_bn(
        ParC(6, 8, 'H', use_pe=True, norm_cfg=dict(type='BN'))).eval()
    parc.fuse()
    x = torch.randn(1, 6, 12, 5)
    with torch.no_grad():
        ref = parc(x)
        assert list(parc.fused._cache) == [12]
        traced = torch.jit.trace(parc, x)
    assert 'upsample' not in str(traced.inlined_graph)
    assert torch.equal(traced(x), ref)

    parc.fused._cache.clear()
    with torch.no_grad():  # (trace's check run would cache outside the trace)
        traced = torch.jit.trace(parc, x, check_trace=False)
    assert len(parc.fused._cache) == 0
    assert 'upsample_bilinear2d' in str(traced.inlined_graph)
    assert _max_err(traced(x), ref) < 1e-5


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'m'.*\['s', 'xs'\]"):
        ParCNet('m')
    with pytest.raises(ValueError, match=r'7.*0\.\.6'):
        ParCNet('s', out_indices=(4, 7))
    with pytest.raises(ValueError, match=r'-8'):
        ParCNet('s', out_indices=-8)
    with pytest.raises(ValueError, match=r'frozen_stages=7.*-1\.\.6'):
        ParCNet('s', frozen_stages=7)
    with pytest.raises(ValueError, match=r'out_stride.*8'):
        ParCNet('s', out_stride=8)
    with pytest.raises(ValueError, match=r'dilate_last=True.*out_stride=32'):
        ParCNet('s', dilate_last=True)
    with pytest.raises(ValueError,
                       match=r"ParCNet needs a batch norm.*'GN'"):
        ParCNet(arch=TINY, norm_cfg=dict(type='GN', num_groups=4))
    with pytest.raises(ValueError, match=r"missing \['head_channels'\]"):
        ParCNet({k: v for k, v in TINY.items() if k != 'head_channels'})
    with pytest.raises(ValueError, match=r"'sum'"):
        ParCNet(dict(TINY, fusion='sum'))
    with pytest.raises(ValueError, match=r"'D'"):
        ParC(4, 8, 'D')


def test_frozen_stages_and_norm_eval():
    model = ParCNet(arch=TINY, out_indices=ALL[:6], frozen_stages=2)
    model.train()
    for name in ('stem', 'layer1', 'layer2'):
        module = getattr(model, name)
        assert not any(p.requires_grad for p in module.parameters())
        assert not any(m.training for m in module.modules()
                       if isinstance(m, _BatchNorm))
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert all(m.training for m in model.layer3.modules()
               if isinstance(m, _BatchNorm))

    model = ParCNet(arch=TINY, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert model.layer3.training


def test_pretrained_becomes_init_cfg():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = ParCNet(arch=TINY, pretrained='ckpt.pth')
    assert model.init_cfg == dict(type='Pretrained', checkpoint='ckpt.pth')
    assert any('deprecated' in str(w.message) for w in caught)
