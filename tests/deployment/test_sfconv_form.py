"""The ONNX form of fused SF-Conv pairs: block-aligned grouped convs or one
dense conv by a cost rule, exact against PyTorch, on a copy of the user's
model."""
import copy

import pytest
import torch

from mmfalcon.deployment import OnnxRuntimeModule, export_module
from mmfalcon.deployment.sfconv_form import (SFCONV_FORMS,
                                             BlockAlignedPointwise,
                                             DensePointwise, aligned_merge,
                                             block_diagonal,
                                             sfconv_export_form)
from mmfalcon.models import FalconNet, fuse_model
from mmfalcon.models.layers.sfconv import FactorizedPointwise, best_window


def fused_pair(in_channels, out_channels, seed=0, impl='matmul'):
    torch.manual_seed(seed)
    window = best_window(in_channels, out_channels)
    pair = FactorizedPointwise(in_channels, out_channels, window, 2,
                               impl=impl).eval()
    with torch.no_grad():  # non-zero biases, so a misplaced one shows
        pair.bias1.normal_()
        pair.bias2.normal_()
    return pair


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize('groups,in_per_group,out_per_group,merge', [
    (2, 16, 8, 2),  # FalconNet-base 32 -> 128, first conv (K=16)
    (8, 2, 16, 8),  # its second conv: G=2 inputs per group
    (16, 8, 4, 4),  # 128 -> 32, first conv (K=8)
    (4, 16, 8, 2),  # 128 -> 32, second conv
    (4, 32, 16, 1),  # already aligned
    (2, 12, 6, None),  # FalconNet-small 24 -> 96: no merge aligns
])
def test_aligned_merge(groups, in_per_group, out_per_group, merge):
    assert aligned_merge(groups, in_per_group, out_per_group) == merge


@pytest.mark.parametrize('bad', [0, -16, 2.0])
def test_aligned_merge_names_a_bad_block(bad):
    with pytest.raises(ValueError, match=f'block must be a positive int, '
                       f'got {bad!r}'):
        aligned_merge(4, 8, 8, block=bad)


def test_block_diagonal_rejects_a_merge_that_does_not_divide():
    with pytest.raises(ValueError, match='merge=3 .* groups=4'):
        block_diagonal(torch.ones(8, 2, 1, 1), groups=4, merge=3)


@pytest.mark.parametrize('form', [BlockAlignedPointwise, DensePointwise])
@pytest.mark.parametrize('in_channels,out_channels', [
    (32, 128), (128, 32), (512, 128), (24, 96), (16, 64)])
def test_export_forms_equal_the_fused_pair(form, in_channels, out_channels):
    pair = fused_pair(in_channels, out_channels)
    exported = form(pair)
    x = torch.randn(2, in_channels, 5, 7)
    with torch.no_grad():
        assert relative_error(exported(x), pair(x)) < 1e-5
        # both PyTorch forms agree with it (the same seed, the same weights)
        conv_pair = fused_pair(in_channels, out_channels, impl='conv')
        assert relative_error(exported(x), conv_pair(x)) < 1e-5


@pytest.mark.parametrize('form', SFCONV_FORMS)
@pytest.mark.parametrize('in_channels,out_channels', [
    (32, 128), (128, 32), (512, 128), (24, 96), (16, 64)])
def test_every_export_form_is_exact_in_float64(form, in_channels,
                                               out_channels):
    """Every form computes the pair's function: in float64 they differ by
    rounding alone (1e-12 of the output scale)."""
    pair = fused_pair(in_channels, out_channels).double()
    exported = sfconv_export_form(pair, form=form)
    assert exported is not pair  # a copy: the user's pair is not changed
    x = torch.randn(2, in_channels, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(exported(x), pair(x)) < 1e-12


def test_an_unknown_export_form_is_named():
    with pytest.raises(ValueError, match=r"SF-Conv export form 'fft': "
                       r"expected one of \('auto', 'aligned'"):
        sfconv_export_form(fused_pair(32, 128), form='fft')


@pytest.mark.parametrize('form', SFCONV_FORMS)
def test_every_export_form_runs_exactly_in_onnxruntime(form, tmp_path,
                                                       randomize_bn):
    """Fused FalconNet-tiny exported with each form, checked in ONNX
    Runtime (float32: 1e-5 of the output scale); the form shows in the
    graph."""
    onnx = pytest.importorskip('onnx')
    model = fuse_model(randomize_bn(
        FalconNet(arch='tiny', out_indices=(2, 3)))).eval()
    shape = (1, 3, 64, 64)
    path = str(tmp_path / f'{form}.onnx')
    export_module(model, shape, path, sfconv_form=form)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ('MatMul' in ops) == (form == 'matmul'), ops
    assert ('Transpose' in ops) == (form != 'dense'), ops
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    for out, ref in zip(OnnxRuntimeModule(path)(x), expected):
        assert relative_error(out, ref) < 1e-5


def test_block_aligned_convs_are_block_aligned():
    pair = fused_pair(128, 32)  # K=8: G=16 groups 8 -> 4, then 4 of 16 -> 8
    form = BlockAlignedPointwise(pair, block=16)
    for weight, groups in ((form.weight1, form.groups1),
                           (form.weight2, form.groups2)):
        assert weight.shape[1] % 16 == 0  # inputs per group
        assert (weight.shape[0] // groups) % 16 == 0  # outputs per group
    assert (form.groups1, form.groups2) == (4, 2)


@pytest.mark.parametrize('in_channels,out_channels,form', [
    # dense costs <= 2x the aligned pair: 4096 vs 2560 / 3072 multiply-adds
    (32, 128, DensePointwise), (128, 32, DensePointwise),
    # dense costs more: 16384 vs 5120, 65536 vs 12288
    (64, 256, BlockAlignedPointwise), (512, 128, BlockAlignedPointwise),
    # no merge aligns 16 -> 64 (K=8: first conv 8 -> 4 in 2 groups)
    (16, 64, DensePointwise),
])
def test_export_form_rule(in_channels, out_channels, form):
    assert type(sfconv_export_form(fused_pair(in_channels,
                                              out_channels))) is form


@pytest.mark.parametrize('build', [
    BlockAlignedPointwise, DensePointwise, sfconv_export_form])
def test_export_forms_take_only_a_fused_pair(build):
    with pytest.raises(TypeError, match='got Conv2d'):
        build(torch.nn.Conv2d(8, 8, 1))


def test_export_writes_convs_exactly_and_leaves_the_model(tmp_path,
                                                          randomize_bn):
    onnx = pytest.importorskip('onnx')
    model = fuse_model(randomize_bn(
        FalconNet(arch='tiny', out_indices=(2, 3)))).eval()
    pairs = [m for m in model.modules() if isinstance(m, FactorizedPointwise)]
    assert pairs
    state = copy.deepcopy(model.state_dict())
    shape = (1, 3, 64, 96)
    path = str(tmp_path / 'falconnet.onnx')
    export_module(model, shape, path)

    # the user's model: same modules, same PyTorch form, same weights
    assert all(isinstance(m, FactorizedPointwise) and m.impl == 'matmul'
               for m in pairs)
    assert [m for m in model.modules()
            if isinstance(m, FactorizedPointwise)] == pairs
    assert all(torch.equal(state[k], v)
               for k, v in model.state_dict().items())

    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert 'MatMul' not in ops
    # widths 16 and 32 become dense convs, the 6 pairs of width 64 and 128
    # block-aligned ones with one shuffle each
    assert len(pairs) == 10 and ops.count('Transpose') == 6
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    actual = OnnxRuntimeModule(path)(x)
    for out, ref in zip(actual, expected):
        assert relative_error(out, ref) < 1e-5


def test_onnxruntime_fuses_the_activations(tmp_path, randomize_bn):
    """Every ReLU of fused FalconNet follows a conv in the exported form, so
    onnxruntime's (platform independent) extended optimizations fold all
    of them into fused convs."""
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    model = fuse_model(randomize_bn(
        FalconNet(arch='tiny', out_indices=(2, 3)))).eval()
    path = str(tmp_path / 'falconnet.onnx')
    export_module(model, (1, 3, 64, 64), path)
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    options.optimized_model_filepath = str(tmp_path / 'optimized.onnx')
    ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath)
           .graph.node]
    assert 'Relu' not in ops and 'FusedConv' in ops
