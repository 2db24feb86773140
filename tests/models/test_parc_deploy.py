"""The inference form of ParC-Net: the merged token mixer of a fused
ParCBlock and the channels_last layout of ParCNet in eval mode, each exact
against the plain forms in float64."""
import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mmfalcon.models import fuse_model
from mmfalcon.models.backbones.parcnet import ParCNet
from mmfalcon.models.layers.parc import (CACHED_SIZES, FFT_MIN_LENGTH, ParC,
                                        ParCBlock)

TINY = dict(stem_channels=8, mv2_layers=[[8, 1, 1], [16, 1, 2]],
            parc_layers=[[16, 16, 32, 1, 8], [24, 24, 48, 2, 4]],
            fusion='concat', head_channels=32)


def _rel_err(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def _random_block(randomize_bn, use_pe):
    """A float64 ParCBlock in eval mode with random kernels, position
    embeddings and BN statistics."""
    torch.manual_seed(0)
    block = ParCBlock(8, 16, kernel_size=5, use_pe=use_pe, ca_reduction=4)
    for name, param in block.named_parameters():
        if 'kernel' in name or 'pe' in name:
            torch.nn.init.normal_(param)
    return randomize_bn(block).double().eval()


def _two_half_output(block, x, monkeypatch):
    """The block's output with its merged mixer turned off (the form
    training and unfused blocks run)."""
    with monkeypatch.context() as patch:
        patch.setattr(block, '_merged_mixer', lambda x: None)
        return block(x)


@pytest.mark.parametrize('use_pe', [True, False])
@pytest.mark.parametrize('shape', [(1, 8, 7, 5), (2, 8, 4, 9)])
def test_merged_mixer_is_exact(randomize_bn, monkeypatch, use_pe, shape):
    """x + R x C + b, R / C the ParC-H / ParC-W circulants and b the
    mixers' output at zero, equals the fused two-half mixer and the unfused
    block to float64 rounding; non-square maps and batches > 1 included."""
    block = _random_block(randomize_bn, use_pe)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        unfused = block(x)
        fuse_model(block)
        merged = block(x)
        assert list(block._cache) == [shape[2:]]  # the merged form ran
        two_half = _two_half_output(block, x, monkeypatch)
    assert _rel_err(merged, two_half) < 1e-9
    assert _rel_err(merged, unfused) < 1e-9


def test_merged_mixer_only_where_it_is_faster(randomize_bn, monkeypatch):
    """Unfused and training blocks, and axes from FFT_MIN_LENGTH on (each
    ParC's FFT form is faster there), run the two-half mixer."""
    block = _random_block(randomize_bn, use_pe=True)
    x = torch.randn(1, 8, 6, 4, dtype=torch.float64)
    long_x = torch.randn(1, 8, FFT_MIN_LENGTH, 3, dtype=torch.float64)
    with torch.no_grad():
        block(x)
        assert len(block._cache) == 0
        fuse_model(block)
        ref = _two_half_output(block, long_x, monkeypatch)
        assert _rel_err(block(long_x), ref) < 1e-9
        assert len(block._cache) == 0
        block(x)
        assert list(block._cache) == [(6, 4)]
    block.train()
    assert len(block._cache) == 0
    block(x)
    assert len(block._cache) == 0


def test_block_cache_keeps_the_most_recent_sizes(randomize_bn):
    """Fed more sizes than CACHED_SIZES, a fused block keeps the
    CACHED_SIZES most recently used (a size used again is kept over an
    older one), its ParCs cache nothing, and every output stays exact."""
    unfused = _random_block(randomize_bn, use_pe=True)
    block = fuse_model(copy.deepcopy(unfused))
    sizes = [(4 + i, 9 - i) for i in range(CACHED_SIZES + 1)]
    # the oldest kept size once more, then a new one: the new one evicts
    # the least recently used, not the oldest stored
    order = sizes + [sizes[1], (3, 3)]
    expected = sizes[2:] + [sizes[1], (3, 3)]
    with torch.no_grad():
        for step, size in enumerate(order):
            x = torch.randn(2, 8, *size, dtype=torch.float64)
            assert _rel_err(block(x), unfused(x)) < 1e-9, size
            assert len(block._cache) == min(step + 1, CACHED_SIZES)
    assert list(block._cache) == expected[-CACHED_SIZES:]
    parcs = [*block.mixer_hw, *block.mixer_wh]
    assert all(len(parc.fused._cache) == 0 for parc in parcs)


@pytest.mark.parametrize('direction', ['H', 'W'])
def test_fused_parc_cache_keeps_the_most_recent_lengths(direction,
                                                        randomize_bn):
    torch.manual_seed(0)
    parc = randomize_bn(ParC(4, 5, direction, use_pe=True,
                             norm_cfg=dict(type='BN'))).double().eval()
    fused = fuse_model(copy.deepcopy(parc))
    lengths = [3 + i for i in range(CACHED_SIZES + 2)] + [FFT_MIN_LENGTH]
    with torch.no_grad():
        for length in lengths:
            shape = [1, 4, 3, 3]
            shape[2 if direction == 'H' else 3] = length
            x = torch.randn(shape, dtype=torch.float64)
            assert _rel_err(fused(x), parc(x)) < 1e-9, length
    assert list(fused.fused._cache) == lengths[-CACHED_SIZES:]


def _input_shapes(fn, *args):
    """The shapes of the tensors each op that ``fn(*args)`` runs takes."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        fn(*args)
    return [tuple(shape) for event in p.events()
            for shape in event.input_shapes]


def test_merged_mixer_makes_no_per_sample_copies(randomize_bn, monkeypatch):
    """A batch of 3 runs the merged mixer without a tensor of one
    circulant per sample ((3, C, H, H), (3 * C, H, H) and alike), with or
    without autograd; the gradient to the input is the two-half form's."""
    block = fuse_model(_random_block(randomize_bn, use_pe=True))
    batch, height, width = 3, 6, 10
    x = torch.randn(batch, 8, height, width, dtype=torch.float64)
    per_sample = {shape for n in (height, width)
                  for shape in ((batch, 8, n, n), (batch * 8, n, n))}
    with torch.no_grad():
        block(x)  # builds the cache entry
        assert not per_sample & set(_input_shapes(block, x))
    x.requires_grad_()
    assert not per_sample & set(_input_shapes(block, x))
    grad, = torch.autograd.grad(block(x).square().sum(), x)
    two_half = _two_half_output(block, x, monkeypatch)
    grad_two_half, = torch.autograd.grad(two_half.square().sum(), x)
    assert _rel_err(grad, grad_two_half) < 1e-9


def test_merged_mixer_trace_records_constants(randomize_bn):
    """Export: after a run at the export size, a tracer records the merged
    mixer (two MatMuls per block) with R, C, b as constants; with no cache
    entry, it records the two-half form with its resize ops."""
    block = fuse_model(_random_block(randomize_bn, use_pe=True)).float()
    x = torch.randn(1, 8, 6, 10)
    with torch.no_grad():
        ref = block(x)
        traced = torch.jit.trace(block, x)
        graph = str(traced.inlined_graph)
        assert graph.count('aten::matmul') == 2
        assert 'upsample' not in graph and 'aten::cat' not in graph
        assert _rel_err(traced(x), ref) < 1e-6

        for module in block.modules():  # the block's and its ParCs'
            if hasattr(module, '_cache'):
                module._cache.clear()
        traced = torch.jit.trace(block, x, check_trace=False)
        assert len(block._cache) == 0
        assert 'upsample_bilinear2d' in str(traced.inlined_graph)
        assert _rel_err(traced(x), ref) < 1e-6


def test_inference_runs_channels_last(randomize_bn):
    """In eval mode ParCNet converts its input to channels_last and returns
    channels_last outputs with the values of the plain layout (training
    mode, a tracer); fused (merged mixers) too."""
    torch.manual_seed(0)
    model = randomize_bn(ParCNet(TINY, out_indices=(0, 3, 4, 5),
                                 drop_rate=0.)).double()
    x = torch.randn(2, 3, 37, 50, dtype=torch.float64)
    with torch.no_grad():
        for module in model.modules():  # plain layout: BN in eval, no CL
            module.training = module is model
        plain = model(x)
        assert all(out.is_contiguous() for out in plain)
        model.eval()
        traced = torch.jit.trace(model, x, check_trace=False)(x)
        outs = model(x)
        fused = fuse_model(model)(x)
    for out, plain_out, traced_out, fused_out in zip(outs, plain, traced,
                                                     fused):
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert fused_out.is_contiguous(memory_format=torch.channels_last)
        assert traced_out.is_contiguous()
        assert _rel_err(out, plain_out) < 1e-12
        assert _rel_err(traced_out, plain_out) < 1e-12
        assert _rel_err(fused_out, plain_out) < 1e-9
