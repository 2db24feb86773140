"""FalconNet ``arch='base'`` pinned to the paper.

Every expected value here comes from the seed article (a summary of "FalconNet:
Factorization for the Light-weight ConvNets", Cai & Shen, 2023) and the
project's FalconNet spec, not from the code: the layer tables (spec 1-4), the
SF-Conv windows (spec 4.3-4.4), the parameter counts (the closed forms of
spec 4.3 with M branches) and the op order of a Meta Light Block (spec 2).
The model is observed from outside: forward hooks on the modules that run.

Rows: ``('conv', C_in, C_out, kernel, stride, groups, dilation, padding)``,
``('bn', C)`` and ``('act', name)``. The M parallel branches of an SF-Conv
layer (each with its own BN) may run as one grouped conv with M-fold outputs
and one BN over the M-fold channels, which computes exactly M independent
convs and BNs; the tables list them that way, and likewise RepSO's N 3x3
branches (a depthwise conv with N outputs per channel).
"""
import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmfalcon.models import FalconNet, RefCO, RepSO, fuse_model

# Paper defaults (seed 2.1, 2.3, 2.4; spec 1-4).
DEPTHS, WIDTHS = (3, 3, 9, 3), (32, 64, 128, 256)
LAMBDA, R, M, N = 4, 2, 3, 3


def conv(cin, cout, kernel, stride=1, groups=1, padding=0, dilation=1):
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)  # noqa
    return ('conv', cin, cout, pair(kernel), pair(stride), groups,
            pair(dilation), pair(padding))


def bn(channels):
    return ('bn', channels)


ACT = ('act', 'ReLU')

# Stem (spec 1): 3x3 s2 conv (3 -> C1/2) + BN + act; 3x3 DW conv + BN + act
# (the shortcut wraps it); 1x1 PW conv (C1/2 -> C1) + BN + act; 3x3 DW conv
# stride 2 + BN, no act. C1 = 32. Padding keeps "same" sizes (stride 4 out).
STEM = [
    conv(3, 16, 3, stride=2, padding=1), bn(16), ACT,
    conv(16, 16, 3, groups=16, padding=1), bn(16), ACT,
    conv(16, 32, 1), bn(32), ACT,
    conv(32, 32, 3, stride=2, groups=32, padding=1), bn(32),
]

# Subsampling before stages 2-4 (spec 1): 2x2 conv, stride 2,
# groups = C_in, C_in -> 2 C_in, then BN, no act.
SUBSAMPLING = {
    1: [conv(32, 64, 2, stride=2, groups=32), bn(64)],
    2: [conv(64, 128, 2, stride=2, groups=64), bn(128)],
    3: [conv(128, 256, 2, stride=2, groups=128), bn(256)],
}

# SF-Conv window K of every channel operator at the paper widths (spec 4.4):
# the feasible K (K | C_in, R | K, K/R | C_out) with the fewest parameters
# C_in K / R + C_in C_out / K, ties to the smaller K. Worked by hand:
#   32 -> 128:   sqrt(2*128) = 16 is feasible              512 params
#   128 -> 32:   sqrt(2*32) = 8 is feasible               1024
#   64 -> 256:   K=16 and K=32 both give 1536, tie -> 16
#   256 -> 64:   K=8 and K=16 both give 3072, tie -> 8
#   128 -> 512:  sqrt(2*512) = 32 is feasible             4096
#   512 -> 128:  sqrt(2*128) = 16 is feasible             8192
#   256 -> 1024: K=32 and K=64 both give 12288, tie -> 32
#   1024 -> 256: K=16 and K=32 both give 24576, tie -> 16
WINDOWS = {
    (32, 128): 16, (128, 32): 8,
    (64, 256): 16, (256, 64): 8,
    (128, 512): 32, (512, 128): 16,
    (256, 1024): 32, (1024, 256): 16,
}


def refco_rows(cin, cout):
    """RefCO (spec 4): M first SF-Convs (grouped 1x1, G = C_in / K groups,
    C_in -> C_in / R) + BN, summed; shuffle; M second SF-Convs (grouped 1x1,
    K / R groups, C_in / R -> C_out) + BN, summed."""
    k = WINDOWS[cin, cout]
    return [
        conv(cin, M * cin // R, 1, groups=cin // k), bn(M * cin // R),
        conv(cin // R, M * cout, 1, groups=k // R), bn(M * cout),
    ]


def repso_branches(c):
    """RepSO at stride 1 (spec 3): N 3x3, a 1x3, a 3x1 and a 1x1 depthwise
    conv, each with its BN, and an identity (BN only): 7 parallel
    branches."""
    return sorted([
        (conv(c, N * c, 3, groups=c, padding=1), bn(N * c)),
        (conv(c, c, (1, 3), groups=c, padding=(0, 1)), bn(c)),
        (conv(c, c, (3, 1), groups=c, padding=(1, 0)), bn(c)),
        (conv(c, c, 1, groups=c), bn(c)),
        (bn(c), ),
    ])


# One Meta Light Block per stage (spec 2): channel op C -> lambda C (+BN),
# act, RepSO on lambda C, act, channel op lambda C -> C (+BN).
BLOCKS = {
    c: (refco_rows(c, LAMBDA * c), repso_branches(LAMBDA * c),
        refco_rows(LAMBDA * c, c))
    for c in WIDTHS
}
BLOCK_LEN = 4 + 1 + 9 + 1 + 4  # rows of one block


def row(module):
    if isinstance(module, nn.Conv2d):
        return conv(module.in_channels, module.out_channels,
                    module.kernel_size, module.stride, module.groups,
                    module.padding, module.dilation)
    if isinstance(module, _BatchNorm):
        return bn(module.num_features)
    if isinstance(module, nn.ReLU):
        return ACT
    return ('other', type(module).__name__)


def record_leaf_calls(model, x):
    """``(row, input, output)`` of every leaf module run, in order."""
    calls, handles = [], []
    for module in model.modules():
        if next(module.children(), None) is None and not isinstance(
                module, nn.Identity):
            handles.append(module.register_forward_hook(
                lambda m, i, o: calls.append((row(m), i[0], o))))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def branches(rows):
    """Group parallel rows into (conv, bn) pairs and lone BNs, sorted."""
    out, i = [], 0
    while i < len(rows):
        if rows[i][0] == 'conv':
            out.append(tuple(rows[i:i + 2]))
            i += 2
        else:
            out.append((rows[i], ))
            i += 1
    return sorted(out)


@pytest.fixture(scope='module')
def base_calls():
    torch.manual_seed(0)
    model = FalconNet(arch='base', out_indices=(0, 1, 2, 3)).eval()
    return record_leaf_calls(model, torch.randn(1, 3, 64, 64))


def test_stem_table(base_calls):
    rows = [r for r, _, _ in base_calls[:len(STEM) + 1]]
    assert rows[:-1] == STEM
    # nothing between the stem and the first block's channel op
    assert rows[-1] == BLOCKS[WIDTHS[0]][0][0]


def test_subsampling_and_block_tables(base_calls):
    rows = [r for r, _, _ in base_calls[len(STEM):]]
    pos = 0
    for stage, (depth, width) in enumerate(zip(DEPTHS, WIDTHS)):
        if stage:
            sub = SUBSAMPLING[stage]
            assert rows[pos:pos + len(sub)] == sub, f'subsampling {stage}'
            pos += len(sub)
        first, spatial, second = BLOCKS[width]
        for b in range(depth):
            block = rows[pos:pos + BLOCK_LEN]
            where = f'stage {stage + 1} block {b}'
            assert block[:4] == first, f'{where}: first channel op'
            assert block[4] == ACT, f'{where}: act after the channel op'
            assert branches(block[5:14]) == spatial, f'{where}: RepSO'
            assert block[14] == ACT, f'{where}: act after RepSO'
            assert block[15:] == second, f'{where}: second channel op'
            pos += BLOCK_LEN
    assert pos == len(rows), 'extra layers after the last stage'


def test_sfconv_windows_at_paper_widths():
    model = FalconNet(arch='base')
    found = {(m.in_channels, m.out_channels): m.window
             for m in model.modules() if isinstance(m, RefCO)}
    assert found == WINDOWS
    for m in model.modules():
        if isinstance(m, RefCO):
            assert m.num_branches == M and m.reduction == R


def closed_form_params(fused):
    """Spec 4.3: an SF-Conv pair has C_in K / R + C_in C_out / K weights;
    training time has M of each layer plus a BN (2 per channel) each, fused
    one of each with a bias. RepSO: N 3x3 + 1x3 + 3x1 + 1x1 depthwise
    weights and N + 4 BNs (identity included), fused one 3x3 with bias."""

    def conv_bn(cin, cout, area, groups):
        weights = cin // groups * cout * area
        return weights + (cout if fused else 2 * cout)

    def refco(cin, cout):
        k = WINDOWS[cin, cout]
        weights = cin * k // R + cin * cout // k
        biases = cin // R + cout
        return weights + biases if fused else M * (weights + 2 * biases)

    def repso(c):
        return 9 * c + c if fused else (9 * N + 3 + 3 + 1) * c + 2 * (
            N + 4) * c

    total = (conv_bn(3, 16, 9, 1) + conv_bn(16, 16, 9, 16) +
             conv_bn(16, 32, 1, 1) + conv_bn(32, 32, 9, 32))
    for stage, (depth, c) in enumerate(zip(DEPTHS, WIDTHS)):
        if stage:
            total += conv_bn(c // 2, c, 4, c // 2)
        total += depth * (refco(c, LAMBDA * c) + repso(LAMBDA * c) +
                          refco(LAMBDA * c, c))
    return total


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_follow_the_closed_forms():
    model = FalconNet(arch='base')
    train = closed_form_params(fused=False)
    assert count(model) == train
    fuse_model(model)
    fused = closed_form_params(fused=True)
    assert count(model) == fused
    assert count(FalconNet(arch='base', deploy=True)) == fused
    print(f'FalconNet-base backbone params: training {train}, fused {fused}')


class _Call:

    def __init__(self, module, inputs, output):
        self.module, self.input, self.output = module, inputs[0], output


def test_meta_light_block_op_order():
    """channel op (+BN) -> act -> RepSO -> act -> channel op (+BN) -> + x
    (spec 2), observed on the data flow of every block."""
    torch.manual_seed(0)
    model = FalconNet(arch='base', out_indices=(3, )).eval()
    ops = (RefCO, RepSO, nn.ReLU)
    blocks = [m for m in model.modules()
              if any(isinstance(c, RepSO) for c in m.children())]
    assert len(blocks) == sum(DEPTHS)
    records, handles = [], []
    for block in blocks:
        calls = []
        records.append(calls)
        handles.append(block.register_forward_hook(
            lambda m, i, o, calls=calls: calls.append(('block', i[0], o))))
        for module in block.modules():
            if isinstance(module, ops):
                handles.append(module.register_forward_hook(
                    lambda m, i, o, calls=calls: calls.append(_Call(m, i, o))))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for handle in handles:
        handle.remove()
    for index, calls in enumerate(records):
        *inner, (_, x, out) = calls
        kinds = [type(c.module) for c in inner]
        assert kinds == [RefCO, nn.ReLU, RepSO, nn.ReLU, RefCO], index
        assert inner[0].input is x, 'the block starts with the channel op'
        for prev, call in zip(inner, inner[1:]):
            # nothing runs between two ops: the output is passed on as is
            assert call.input is prev.output, (index, type(call.module))
        assert inner[0].output.shape[1] == LAMBDA * x.shape[1]
        assert torch.equal(out, x + inner[-1].output), 'residual'


@pytest.mark.parametrize('shortcut', ['after_act', 'before_act', None])
def test_stem_shortcut_position(shortcut):
    """Default (spec 1): the shortcut wraps the stride-1 3x3 DW conv with
    its BN and act; the other positions are explicit choices."""
    kwargs = {} if shortcut == 'after_act' else dict(stem_shortcut=shortcut)
    torch.manual_seed(0)
    model = FalconNet(arch='base', **kwargs).eval()
    calls = record_leaf_calls(model, torch.randn(1, 3, 32, 32))
    assert [r for r, _, _ in calls[:len(STEM)]] == STEM
    first_act, dw_bn, dw_act, pw_conv = calls[2], calls[4], calls[5], calls[6]
    assert calls[3][1] is first_act[2]
    if shortcut == 'after_act':
        assert torch.equal(pw_conv[1], first_act[2] + dw_act[2])
    elif shortcut == 'before_act':
        assert torch.equal(dw_act[1], first_act[2] + dw_bn[2])
        assert pw_conv[1] is dw_act[2]
    else:
        assert dw_act[1] is dw_bn[2] and pw_conv[1] is dw_act[2]


def test_sandglass_block_layers_and_order():
    """MobileNeXt's sandglass block as LightNet hosts it (spec 1): 3x3 DW
    (+BN, act) -> 1x1 reduce (+BN, linear) -> 1x1 expand (+BN, act) -> 3x3
    DW (+BN, linear) -> + x, both DW convs on the wide tensor."""
    torch.manual_seed(0)
    model = FalconNet(arch='base', block='SandglassBlock').eval()
    calls = record_leaf_calls(model, torch.randn(1, 3, 32, 32))
    first = calls[len(STEM):len(STEM) + 10]
    c, hidden = WIDTHS[0], WIDTHS[0] // LAMBDA
    assert [r for r, _, _ in first] == [
        conv(c, c, 3, groups=c, padding=1), bn(c), ACT,
        conv(c, hidden, 1), bn(hidden),
        conv(hidden, c, 1), bn(c), ACT,
        conv(c, c, 3, groups=c, padding=1), bn(c),
    ]
    for (_, _, prev), (_, x, _) in zip(first, first[1:]):
        assert x is prev
    block_input, last_bn = first[0][1], first[-1][2]
    assert torch.equal(calls[len(STEM) + 10][1], block_input + last_bn)
