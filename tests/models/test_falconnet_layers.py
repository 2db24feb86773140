import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmfalcon
from mmfalcon.models import FalconNet, fuse_model
from mmfalcon.models.layers import (ConvNorm, FactorizedPointwise, RefCO,
                                    RepSO, SandglassBlock, SFConv,
                                    best_window, sfconv_params)
from mmfalcon.models.layers.sfconv import SFCONV_IMPLS

ATOL = 1e-4


def assert_fusion_exact(layer, x, randomize_bn):
    randomize_bn(layer).eval()
    with torch.no_grad():
        before = layer(x)
        layer.fuse()
        after = layer(x)
    assert layer.is_fused
    err = (before - after).abs().max().item()
    assert err < ATOL, f'fused output differs by {err}'
    return before


@pytest.mark.parametrize('stride,dilation', [(1, 1), (2, 1), (1, 2)])
def test_repso_fusion_exact(stride, dilation, randomize_bn):
    layer = RepSO(8, stride=stride, dilation=dilation)
    x = torch.randn(2, 8, 13, 10)
    out = assert_fusion_exact(layer, x, randomize_bn)
    assert out.shape[-2:] == ((13 + stride - 1) // stride,
                              (10 + stride - 1) // stride)
    # One 3x3 depthwise conv with bias remains, nothing else.
    assert [type(m) for m in layer.modules()] == [RepSO, nn.Conv2d]
    assert layer.fused.weight.shape == (8, 1, 3, 3)


def test_repso_has_seven_branches_at_stride_one():
    layer = RepSO(4, num_3x3=3)
    bns = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
    # 3x3 (3 branches in one BN), 1x3, 3x1, 1x1, identity
    assert sum(bn.num_features for bn in bns) == 7 * 4
    assert RepSO(4, stride=2).identity is None


@pytest.mark.parametrize('cls,branches', [(SFConv, 1), (RefCO, 3)])
@pytest.mark.parametrize('cin,cout', [(32, 128), (128, 32), (24, 96)])
def test_sfconv_fusion_exact(cls, branches, cin, cout, randomize_bn):
    layer = cls(cin, cout)
    assert layer.num_branches == branches
    x = torch.randn(2, cin, 7, 9)
    out = assert_fusion_exact(layer, x, randomize_bn)
    assert out.shape == (2, cout, 7, 9)


def conv2d_calls(monkeypatch, module, x):
    """How many times ``module(x)`` calls ``F.conv2d``."""
    calls = []
    conv2d = F.conv2d
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(F, 'conv2d',
                      lambda *a, **k: calls.append(1) or conv2d(*a, **k))
        out = module(x)
    return out, len(calls)


def test_fused_sfconv_implementations_agree(randomize_bn, monkeypatch):
    """``impl`` picks the fused pair's form: the same function (float64,
    exact up to rounding), matmuls or two grouped convs."""
    layers = {impl: RefCO(32, 128, impl=impl).double()
              for impl in SFCONV_IMPLS}
    randomize_bn(layers['matmul'])
    layers['conv'].load_state_dict(layers['matmul'].state_dict())
    x = torch.randn(1, 32, 5, 6, dtype=torch.float64)
    outs = {}
    for impl, layer in layers.items():
        layer.eval().fuse()
        assert layer.fused.impl == impl
        outs[impl], calls = conv2d_calls(monkeypatch, layer, x)
        assert calls == (2 if impl == 'conv' else 0)
    err = (outs['matmul'] - outs['conv']).abs().max().item()
    assert err < 1e-12 * outs['matmul'].abs().max().item()


def test_falconnet_sfconv_impl_reaches_every_fused_pair(monkeypatch):
    model = FalconNet(arch='tiny', sfconv_impl='conv').eval()
    fuse_model(model)
    pairs = [m for m in model.modules()
             if isinstance(m, FactorizedPointwise)]
    assert pairs and all(m.impl == 'conv' for m in pairs)
    _, calls = conv2d_calls(monkeypatch, pairs[0], torch.randn(
        1, pairs[0].groups * pairs[0].window, 3, 3))
    assert calls == 2


@pytest.mark.parametrize('build', [
    lambda impl: FactorizedPointwise(32, 128, 16, 2, impl=impl),
    lambda impl: SFConv(32, 128, impl=impl),
    lambda impl: RefCO(32, 128, impl=impl, deploy=True),
    lambda impl: FalconNet(arch='tiny', sfconv_impl=impl),
])
def test_unknown_sfconv_impl_is_refused(build):
    with pytest.raises(ValueError, match=r"SF-Conv impl='Conv': expected "
                       r"one of \('matmul', 'conv'\)"):
        build('Conv')


@pytest.mark.parametrize('deploy', [False, True])
def test_sfconv_full_receptive_range(deploy):
    """Every output channel depends on every input channel (spec 4.3)."""
    cin, cout = 16, 64
    layer = SFConv(cin, cout, deploy=deploy).eval()
    for param in layer.parameters():  # no accidental zeros
        nn.init.uniform_(param, 0.5, 1.5)
    x = torch.randn(1, cin, 1, 1)
    jac = torch.autograd.functional.jacobian(
        lambda t: layer(t.reshape(1, cin, 1, 1)).flatten(), x.flatten())
    assert jac.shape == (cout, cin)
    assert (jac.abs() > 0).all()


def test_sfconv_first_layer_alone_is_sparse():
    """Sanity check of the Jacobian test: one grouped layer is not full."""
    layer = SFConv(16, 64).eval()
    first = nn.Sequential(layer.conv1)
    nn.init.uniform_(layer.conv1.weight, 0.5, 1.5)
    jac = torch.autograd.functional.jacobian(
        lambda t: first(t.reshape(1, 16, 1, 1)).flatten(), torch.randn(16))
    assert not (jac.abs() > 0).all()


@pytest.mark.parametrize('cin,cout,reduction', [(32, 128, 2), (128, 32, 2),
                                                (64, 256, 4), (48, 192, 2)])
def test_sfconv_parameter_count_matches_formula(cin, cout, reduction):
    layer = SFConv(cin, cout, reduction=reduction)
    k = layer.window
    conv_params = layer.conv1.weight.numel() + layer.conv2.weight.numel()
    assert conv_params == cin * k // reduction + cin * cout // k
    assert conv_params == sfconv_params(cin, cout, k, reduction)
    layer.fuse()
    weights = layer.fused.weight1.numel() + layer.fused.weight2.numel()
    assert weights == conv_params
    # far fewer than the dense 1x1 conv it replaces
    assert weights < cin * cout / 2


def test_best_window_is_optimal_and_feasible():
    # C_out = 128, R = 2: the optimum sqrt(2 * 128) = 16 is feasible.
    assert best_window(32, 128, 2) == 16
    # ties go to the smaller window: 16 -> 64 gives 192 params for K=8, 16
    assert best_window(16, 64, 2) == 8
    assert best_window(7, 13, 2) is None


def test_sfconv_bad_window_names_value():
    with pytest.raises(ValueError, match='window=5'):
        SFConv(32, 128, window=5)
    with pytest.raises(ValueError, match='7 -> 13'):
        SFConv(7, 13)


def test_refco_branches_fold_into_grouped_not_dense(randomize_bn):
    layer = RefCO(64, 256)
    layer.fuse()
    total = sum(p.numel() for p in layer.parameters())
    assert total < 64 * 256 / 4  # not a dense 1x1 conv


def test_convnorm_fusion_exact(randomize_bn):
    layer = ConvNorm(6, 10, 3, stride=2, groups=2,
                     act_cfg=dict(type='ReLU'))
    assert_fusion_exact(layer, torch.randn(1, 6, 11, 8), randomize_bn)


@pytest.mark.parametrize('dilation', [1, 2])
def test_sandglass_fusion_exact(dilation, randomize_bn):
    block = randomize_bn(SandglassBlock(12, reduction_ratio=3,
                                        dilation=dilation)).eval()
    x = torch.randn(2, 12, 9, 7)
    with torch.no_grad():
        before = block(x)
        mmfalcon.fuse_model(block)
        after = block(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert before.shape == x.shape
    assert (before - after).abs().max().item() < ATOL


def test_fuse_is_idempotent(randomize_bn):
    layer = randomize_bn(RepSO(4)).eval()
    layer.fuse()
    weight = layer.fused.weight.clone()
    layer.fuse()
    assert torch.equal(weight, layer.fused.weight)


def test_checkpoint_form_mismatch_is_reported():
    unfused, fused = RefCO(16, 64), RefCO(16, 64, deploy=True)
    with pytest.raises(RuntimeError, match='fused .deploy. form'):
        unfused.load_state_dict(fused.state_dict())
    with pytest.raises(RuntimeError, match='unfused .training. form'):
        fused.load_state_dict(RefCO(16, 64).state_dict())
    fused.load_state_dict(RefCO(16, 64, deploy=True).state_dict())
