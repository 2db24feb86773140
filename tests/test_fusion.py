"""fuse_model on a model it does not know: mmfalcon backbone, a foreign
re-parameterizable layer and mmcv ConvModule heads; and timm's walker on
mmfalcon's backbones."""
import copy

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmfalcon import fuse_model, is_fused
from mmfalcon.models import FalconNet, ParCNet


class ForeignRepBlock(nn.Module):
    """A layer in the mmpretrain / timm convention: 3x3 + 1x1 branches with
    BN, fused by its own ``method`` (``switch_to_deploy`` or
    ``reparameterize``); it keeps a ``deploy`` flag of its own."""

    def __init__(self, channels, method):
        super().__init__()
        self.deploy = False
        self.calls = 0
        self.branch3 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels))
        self.branch1 = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels))
        setattr(self, method, self._fuse)

    def forward(self, x):
        if self.deploy:
            return self.fused(x)
        return self.branch3(x) + self.branch1(x)

    @torch.no_grad()
    def _fuse(self):
        self.calls += 1
        if self.deploy:
            return
        weight = torch.zeros_like(self.branch3[0].weight)
        bias = 0
        for conv, bn in (self.branch3, self.branch1):
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            kernel = conv.weight * scale.reshape(-1, 1, 1, 1)
            pad = (3 - kernel.shape[-1]) // 2
            weight += nn.functional.pad(kernel, [pad] * 4)
            bias = bias + bn.bias - bn.running_mean * scale
        self.fused = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
        self.fused.to(weight.dtype)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(bias)
        del self.branch3, self.branch1
        self.deploy = True


class Bystander(nn.Module):
    """A foreign module with a ``deploy`` flag and no way to fuse; its
    ``reparameterize`` is a VAE's, which takes arguments."""

    def __init__(self):
        super().__init__()
        self.deploy = False

    def reparameterize(self, mu, logvar):
        raise AssertionError('not a fusing method: must not be called')

    def forward(self, x):
        return x


class Mixed(nn.Module):

    def __init__(self, method):
        super().__init__()
        self.backbone = FalconNet(arch='tiny', out_indices=(3, ))
        channels = self.backbone.out_channels[0]
        self.foreign = ForeignRepBlock(channels, method)
        self.bystander = Bystander()
        self.head = nn.Sequential(
            ConvModule(channels, 16, 3, padding=1, norm_cfg=dict(type='BN')),
            ConvModule(16, 16, 1, norm_cfg=dict(type='BN'),
                       act_cfg=dict(type='ReLU6')),
            nn.Conv2d(16, 4, 1))

    def forward(self, x):
        return self.head(self.bystander(self.foreign(self.backbone(x)[0])))


def bn_count(model):
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


@pytest.mark.parametrize('method', ['switch_to_deploy', 'reparameterize'])
def test_fuse_any_model_exact_and_bn_free(method, randomize_bn):
    model = randomize_bn(Mixed(method)).double().eval()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    assert bn_count(model) > 0
    fuse_model(model)
    with torch.no_grad():
        after = model(x)
    # float64: what is left is the rounding of a different summation order
    rel = ((after - before).abs().max() / before.abs().max()).item()
    assert rel < 1e-9
    assert bn_count(model) == 0, [
        name for name, m in model.named_modules() if isinstance(m, _BatchNorm)
    ]
    assert model.foreign.calls == 1 and model.foreign.deploy
    assert model.bystander.deploy is False  # not ours: left alone
    fuse_model(model)  # idempotent
    with torch.no_grad():
        assert torch.equal(model(x), after)


def test_pre_norm_conv_module_is_left_unfolded(randomize_bn):
    # Its BN runs before the conv: folding it into the conv would be wrong.
    module = randomize_bn(
        ConvModule(4, 4, 3, padding=1, norm_cfg=dict(type='BN'),
                   order=('norm', 'conv', 'act'))).double().eval()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        before = module(x)
        fuse_model(module)
        assert torch.equal(module(x), before)
    assert bn_count(module) == 1


def reparameterize_as_timm(module):
    """timm's walker, ``timm.utils.model.reparameterize_model(module,
    inplace=True)`` (timm itself cannot be imported here): parents before
    their children, a child with a ``fuse`` attribute is replaced by what
    ``fuse()`` returns, any other child has its ``reparameterize()``, else
    its ``switch_to_deploy()``, called; the walk goes on inside the child
    object it visited."""
    for name, child in module.named_children():
        if hasattr(child, 'fuse'):
            setattr(module, name, child.fuse())
        elif hasattr(child, 'reparameterize'):
            child.reparameterize()
        elif hasattr(child, 'switch_to_deploy'):
            child.switch_to_deploy()
        reparameterize_as_timm(child)
    return module


PARCNET_TINY = dict(stem_channels=8, mv2_layers=[[8, 1, 1], [16, 1, 2]],
                    parc_layers=[[16, 16, 32, 1, 8], [24, 24, 48, 2, 4]],
                    fusion='concat', head_channels=32)


@pytest.mark.parametrize('build', [
    lambda: FalconNet(arch='tiny', out_indices=(1, 2, 3)),
    lambda: ParCNet(PARCNET_TINY, out_indices=(3, 4, 5), drop_rate=0.),
], ids=['FalconNet', 'ParCNet'])
def test_timm_walker_fuses_like_fuse_model(build, randomize_bn):
    """Each mmfalcon layer's ``fuse()`` returns the layer itself, fused, so
    timm's walker keeps the eval-mode function (float64) and ends with the
    modules and weights that fuse_model gives: the same fused checkpoint."""
    torch.manual_seed(0)
    model = randomize_bn(build()).double().eval()
    ours = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        reparameterize_as_timm(model)
        after = model(x)
    assert is_fused(model)
    for out, ref in zip(after, before, strict=True):
        assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-9
    fuse_model(ours)
    walked, fused = model.state_dict(), ours.state_dict()
    assert list(walked) == list(fused)
    assert all(torch.equal(walked[key], fused[key]) for key in fused)
