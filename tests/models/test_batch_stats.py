"""Training with branches folded by batch statistics (RepSO, SF-Conv/RefCO)
computes the branches' function: outputs, gradients, running statistics."""
import functools
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MMLogger

from mmfalcon.models import FalconNet
from mmfalcon.models.layers import RefCO, RepSO, SFConv, batch_stats
from mmfalcon.models.layers.batch_stats import describe_folding, patch_moments


def randomize_affine(model, seed=0):
    """Non-trivial BN affine parameters (the running statistics are what
    the training forward writes, so they stay at their defaults)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.affine:
            with torch.no_grad():
                module.weight.copy_(torch.rand(
                    module.num_features, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(
                    module.num_features, generator=gen))
    return model


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def train_step(model, x, grad_seed=1):
    """Output, input gradient and parameter gradients of one training
    forward / backward with a fixed random output gradient."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(
        grad_seed), dtype=out.dtype)
    (out * grad).sum().backward()
    return out, x.grad, [p.grad for p in model.parameters()]


def assert_same_training(branches, folded, x, tol=1e-10):
    out_b, dx_b, grads_b = train_step(branches, x)
    out_f, dx_f, grads_f = train_step(folded, x)
    assert relative(out_f, out_b) < tol
    assert relative(dx_f, dx_b) < tol
    scale = max(g.abs().max() for g in grads_b)
    for g_f, g_b in zip(grads_f, grads_b):
        assert (g_f - g_b).abs().max() / scale < tol
    for (name, buf_b), buf_f in zip(branches.named_buffers(),
                                    folded.buffers()):
        assert torch.allclose(buf_f, buf_b, rtol=tol, atol=tol), name


def built_pair(build):
    """``build(fold_batch_stats=False)`` and ``build(fold_batch_stats=True)``
    with the same weights."""
    branches = build(fold_batch_stats=False)
    folded = build(fold_batch_stats=True)
    folded.load_state_dict(branches.state_dict(), strict=True)
    return branches, folded


def folded_pair(build):
    """:func:`built_pair` in float64 training mode, with the same random
    BN affine parameters."""
    branches, folded = built_pair(build)
    return (randomize_affine(branches).double().train(),
            randomize_affine(folded).double().train())


@pytest.mark.parametrize('dilation,size', [(1, (9, 7)), (2, (9, 11)),
                                           (3, (4, 5)), (1, (1, 1)),
                                           (1, (2, 3))])
def test_repso_folded_training_equals_branches(dilation, size):
    branches, folded = folded_pair(
        functools.partial(RepSO, 6, dilation=dilation))
    x = torch.randn(3, 6, *size, dtype=torch.float64) + 0.5
    assert_same_training(branches, folded, x)
    assert_same_training(branches, folded, x * 2 - 1)  # running stats again


def test_repso_folded_with_cumulative_average_and_no_affine():
    branches, folded = folded_pair(functools.partial(
        RepSO, 4, norm_cfg=dict(type='BN', momentum=None, affine=False)))
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    for _ in range(3):  # momentum None: the average over all batches
        assert_same_training(branches, folded, x)
        x = x * 1.5 + 0.3


@pytest.mark.parametrize('layer,channels,size', [
    (RefCO, (32, 128), (5, 7)),
    (RefCO, (128, 32), (3, 3)),
    (SFConv, (64, 256), (4, 4)),
    (RefCO, (64, 256), (1, 1)),
])
def test_sfconv_folded_training_equals_branches(layer, channels, size):
    branches, folded = folded_pair(functools.partial(layer, *channels))
    x = torch.randn(3, channels[0], *size, dtype=torch.float64) + 3
    assert_same_training(branches, folded, x)
    assert_same_training(branches, folded, x - 3)


def unfolded_moments(x, dilation):
    """Reference: the explicit patches of a 'same' 3x3 depthwise conv."""
    n, c, h, w = x.shape
    patches = F.unfold(x, 3, dilation=dilation, padding=dilation)
    patches = patches.reshape(n, c, 9, h * w).permute(1, 2, 0, 3).reshape(
        c, 9, -1)
    return patches.mean(2), patches @ patches.transpose(1, 2) / (n * h * w)


@pytest.mark.parametrize('dilation,size', [(1, (5, 6)), (2, (7, 3)),
                                           (4, (3, 9))])
def test_patch_moments_match_unfolded_patches_and_gradcheck(dilation, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    mean, second = patch_moments(x, dilation)
    ref_mean, ref_second = unfolded_moments(x, dilation)
    assert relative(mean, ref_mean) < 1e-12
    assert relative(second, ref_second) < 1e-12
    assert torch.autograd.gradcheck(
        lambda t: patch_moments(t, dilation), (x, ))


def test_patch_moments_in_channel_chunks(monkeypatch):
    """On the CPU the lagged products go through cache-sized chunks of
    channels (here 2 channels of 5 per chunk, the last one short): the same
    moments as the explicit patches."""
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    monkeypatch.setattr(batch_stats, '_CPU_CHUNK_BYTES',
                        2 * x[:, 0].numel() * x.element_size())
    mean, second = patch_moments(x, 2)
    ref_mean, ref_second = unfolded_moments(x, 2)
    assert relative(mean, ref_mean) < 1e-12
    assert relative(second, ref_second) < 1e-12


def test_folding_is_used_only_where_exact():
    """Eval mode, stride 2, other norms and fold_batch_stats=False run the
    branches, saying why; folded training (BN, SyncBN) runs one conv
    instead of one per branch."""
    def conv_calls(layer, x):
        calls = []
        hooks = [m.register_forward_hook(lambda *a: calls.append(1))
                 for m in layer.modules() if isinstance(m, nn.Conv2d)]
        layer(x)
        for h in hooks:
            h.remove()
        return len(calls)

    x = torch.randn(2, 4, 6, 6)

    def runs(layer, x, refusal):
        assert layer.fold_refusal() == refusal
        return conv_calls(layer, x)

    assert runs(RepSO(4).train(), x, None) == 0  # a functional conv
    for norm in ('SyncBN', 'mmfalcon.CPUSyncBN'):
        assert runs(RepSO(4, norm_cfg=dict(type=norm)).train(), x, None) == 0
    assert runs(RepSO(4).eval(), x, ('eval', '')) == 4
    assert runs(RepSO(4, stride=2).train(), x, ('stride', '2')) == 4
    assert runs(RepSO(4, norm_cfg=dict(type='GN', num_groups=1)).train(), x,
                ('norm', 'GroupNorm')) == 4
    assert runs(RepSO(4, fold_batch_stats=False).train(), x,
                ('disabled', '')) == 4
    x = torch.randn(2, 16, 3, 3)
    assert runs(SFConv(16, 16).train(), x, None) == 0
    assert runs(SFConv(16, 16, norm_cfg=dict(type='SyncBN')).train(), x,
                None) == 0
    assert runs(SFConv(16, 16, fold_batch_stats=False).train(), x,
                ('disabled', '')) == 2


@pytest.mark.parametrize('enabled', [True, False])
def test_falconnet_fold_batch_stats_reaches_every_layer(enabled):
    """The backbone argument sets every RepSO and SF-Conv/RefCO, and their
    training forward follows it: no branch conv runs when folded."""
    model = FalconNet(arch='tiny', fold_batch_stats=enabled).train()
    layers = [m for m in model.modules() if isinstance(m, (RepSO, SFConv))]
    assert layers and all(m.fold_batch_stats == enabled for m in layers)
    convs = [conv for layer in layers for conv in layer.modules()
             if isinstance(conv, nn.Conv2d)]
    calls = []
    for conv in convs:
        conv.register_forward_hook(lambda *a: calls.append(1))
    model(torch.randn(2, 3, 64, 64))
    assert len(calls) == (0 if enabled else len(convs))


def test_falconnet_training_forward_unchanged():
    """The issue's bound: the training forward within 1e-5 relative of the
    branch-by-branch forward in float32; float64 shows it is rounding.
    Checkpoints of either form load strictly into the other."""
    torch.manual_seed(0)
    branches, folded = built_pair(functools.partial(
        FalconNet, arch='tiny', out_indices=(1, 2, 3)))
    branches.train(), folded.train()
    x = torch.randn(2, 3, 96, 128)
    for out_f, out_b in zip(folded(x), branches(x)):
        assert relative(out_f, out_b) < 1e-5
    folded.load_state_dict(branches.state_dict(), strict=True)
    branches64, folded64 = branches.double(), folded.double()
    for out_f, out_b in zip(folded64(x.double()), branches64(x.double())):
        assert relative(out_f, out_b) < 1e-10


def test_folded_training_under_bfloat16_autocast():
    """Mixed precision (``--amp`` on the CPU): the folded layers keep
    the branches' output precision and take statistics in float32, as BN
    does, so outputs and running statistics stay close to float32's."""
    torch.manual_seed(0)
    build = functools.partial(FalconNet, arch='tiny', out_indices=(3, ))
    reference, folded = built_pair(build)
    mixed = build(fold_batch_stats=True)
    mixed.load_state_dict(folded.state_dict())
    x = torch.randn(2, 3, 64, 96)
    (out_ref, ) = reference.train()(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        (out_mixed, ) = mixed.train()(x)
    assert out_mixed.dtype == torch.bfloat16
    assert relative(out_mixed.float(), out_ref) < 0.1
    for (name, buf_ref), buf_mixed in zip(reference.named_buffers(),
                                          mixed.buffers()):
        assert buf_mixed.dtype == buf_ref.dtype, name
        if name.endswith('running_var'):
            assert torch.allclose(buf_mixed, buf_ref, rtol=0.05, atol=1e-3)


@pytest.fixture
def logged(request):
    """The messages of mmengine's current logger (``print_log(logger=
    'current')``) during the test: a fresh logger becomes the current one."""
    logger = MMLogger.get_instance(f'test_batch_stats.{request.node.name}')
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def test_describe_folding_counts_layers_by_reason():
    layers = nn.Sequential(
        RepSO(4), RepSO(4, stride=2), RepSO(4, stride=2),
        RepSO(4, norm_cfg=dict(type='GN', num_groups=1)),
        SFConv(16, 16, fold_batch_stats=False), RepSO(4).fuse()).train()
    assert describe_folding(layers, 'Net') == (
        'Net trains 1 of 5 re-parameterizable layers folded by batch '
        'statistics; branch by branch: 1 with fold_batch_stats=False, '
        '1 with GroupNorm (the fold takes BatchNorm2d and SyncBatchNorm), '
        '2 with stride 2 (the fold needs stride 1).')
    assert describe_folding(nn.Sequential(RepSO(4).fuse()), 'Net') is None


def test_falconnet_says_once_how_it_trains(logged):
    """One line when set to train mode, again only when it changes:
    the layer counts and why layers run branch by branch."""
    x = torch.randn(2, 3, 32, 32)

    def lines(model, steps=2):
        start = len(logged)
        for _ in range(steps):
            model.train()(x)
        return [m for m in logged[start:] if m.startswith('FalconNet')]

    model = FalconNet('tiny')
    total = sum(isinstance(m, (RepSO, SFConv)) for m in model.modules())
    head = f'FalconNet trains {{}} of {total} re-parameterizable layers ' \
        'folded by batch statistics'
    assert lines(model) == [head.format(total) + '.']
    model.eval()(x)
    assert lines(model) == []  # the same again: said once
    for layer in model.stages[0].modules():
        if isinstance(layer, (RepSO, SFConv)):
            layer.fold_batch_stats = False
    stage = sum(isinstance(m, (RepSO, SFConv))
                for m in model.stages[0].modules())
    assert lines(model) == [
        head.format(total - stage) +
        f'; branch by branch: {stage} with fold_batch_stats=False.']
    assert lines(FalconNet('tiny', norm_eval=True)) == [
        head.format(0) + f'; branch by branch: {total} with eval-mode BN '
        '(norm_eval, frozen stages).']
    assert lines(FalconNet('tiny', frozen_stages=1,
                           norm_cfg=dict(type='SyncBN'))) == [
        head.format(total - stage) + f'; SyncBN on one process '
        f"({total - stage} of them): folded with this process's statistics"
        f'; branch by branch: {stage} with eval-mode BN (norm_eval, frozen '
        'stages).']
