"""The export forms of a fused ParC token mixer: each computes the fused
block's function (float64), runs in ONNX Runtime and shows in the graph;
each runtime names its own; the user's model is not changed."""
import copy

import pytest
import torch

from mmfalcon.deployment import OnnxRuntimeModule, export_module
from mmfalcon.deployment.backends import BACKENDS, get_backend
from mmfalcon.deployment.parc_form import (PARC_FORMS, CircularForm,
                                           ParCBlockForm, parc_export_form)
from mmfalcon.deployment.runtime import relative_error
from mmfalcon.models import fuse_model
from mmfalcon.models.backbones.parcnet import ParCNet
from mmfalcon.models.layers.parc import ParCBlock

TINY = dict(stem_channels=8, mv2_layers=[[8, 1, 1], [16, 1, 2]],
            parc_layers=[[16, 16, 32, 1, 8], [24, 24, 48, 2, 4]],
            fusion='concat', head_channels=32)


def _random_block(randomize_bn, use_pe):
    """A fused float64 ParCBlock in eval mode with random kernels, position
    embeddings and BN statistics, and the unfused block it came from."""
    torch.manual_seed(0)
    block = ParCBlock(8, 16, kernel_size=5, use_pe=use_pe, ca_reduction=4)
    for name, param in block.named_parameters():
        if 'kernel' in name or 'pe' in name:
            torch.nn.init.normal_(param)
    unfused = randomize_bn(block).double().eval()
    return fuse_model(copy.deepcopy(unfused)).eval(), unfused


@pytest.mark.parametrize('form', PARC_FORMS)
@pytest.mark.parametrize('use_pe', [True, False])
@pytest.mark.parametrize('shape', [(1, 8, 7, 5), (2, 8, 4, 9)])
def test_every_form_is_exact_in_float64(randomize_bn, form, use_pe, shape):
    """Each form equals the fused block (its merged mixer) and the unfused
    block to float64 rounding, on non-square maps and batches > 1."""
    block, unfused = _random_block(randomize_bn, use_pe)
    exported = parc_export_form(copy.deepcopy(block), form)
    assert isinstance(exported, ParCBlock if form == 'merged' else
                      ParCBlockForm)
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        fused = block(x)
        assert list(block._cache) == [shape[2:]]  # the merged mixer ran
        out = exported(x)
        for ref in (fused, unfused(x)):
            assert relative_error([ref], [out.numpy()], form) < 1e-12


def test_a_form_makes_its_kernels_once_per_length(randomize_bn):
    """The conv form keeps the resized kernel of each length it met and
    reuses it, so a tracer after one run records it as a constant."""
    block, _ = _random_block(randomize_bn, use_pe=True)
    exported = parc_export_form(block, 'conv')
    parcs = [*exported.mixer_hw, *exported.mixer_wh]
    assert all(isinstance(parc, CircularForm) for parc in parcs)
    x = torch.randn(1, 8, 6, 4, dtype=torch.float64)
    with torch.no_grad():
        exported(x)
        kernels = [parc._cache.get(6 if parc.dim == 2 else 4)[0]
                   for parc in parcs]
        exported(x)
    assert [list(parc._cache) for parc in parcs] == [[6], [4], [4], [6]]
    assert all(parc._cache.get(k.shape[parc.dim])[0] is k
               for parc, k in zip(parcs, kernels))


def test_bad_forms_and_layers_are_named(randomize_bn):
    block, unfused = _random_block(randomize_bn, use_pe=False)
    with pytest.raises(ValueError, match=r"ParC export form 'fft' \(torch's "
                       r"ONNX exporter writes no op for torch.fft\): "
                       r"expected one of \('merged', 'matmul', 'conv'\)"):
        parc_export_form(block, 'fft')
    with pytest.raises(ValueError, match="ParC export form 'circulant'"):
        get_backend('onnxruntime', parc_form='circulant')
    with pytest.raises(ValueError, match='needs a fused ParCBlock'):
        parc_export_form(unfused, 'conv')
    with pytest.raises(TypeError, match='expected a ParCBlock, got Conv2d'):
        parc_export_form(torch.nn.Conv2d(2, 2, 1), 'conv')


@pytest.mark.parametrize('form', PARC_FORMS)
def test_every_form_runs_exactly_in_onnxruntime(form, tmp_path,
                                                randomize_bn):
    """A fused ParC-Net exported with each form, checked in ONNX Runtime
    (float32: 1e-5 of the output scale); the form shows in the graph, and
    the user's model is not changed."""
    onnx = pytest.importorskip('onnx')
    model = fuse_model(randomize_bn(
        ParCNet(TINY, out_indices=(3, 4, 5)))).eval()
    state = copy.deepcopy(model.state_dict())
    shape = (1, 3, 64, 96)
    path = str(tmp_path / f'{form}.onnx')
    export_module(model, shape, path, parc_form=form)
    assert all(isinstance(m, ParCBlock) for name, m in model.named_modules()
               if name.endswith('blocks.0'))
    assert all(torch.equal(state[k], v) for k, v in
               model.state_dict().items())
    nodes = onnx.load(path).graph.node
    matmuls = sum(node.op_type == 'MatMul' for node in nodes)
    # per block: two products merged, four split into halves, none as convs
    blocks = sum(isinstance(m, ParCBlock) for m in model.modules())
    assert matmuls == dict(merged=2, matmul=4, conv=0)[form] * blocks
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    assert relative_error(expected, OnnxRuntimeModule(path).run(x.numpy()),
                          path) < 1e-5


def test_each_runtime_names_its_measured_form():
    """docs/deployment.md: the merged mixer is fastest in ONNX Runtime and
    OpenVINO, the depthwise conv in ncnn."""
    assert {name: cls.parc_form for name, cls in BACKENDS.items()} == dict(
        onnxruntime='merged', openvino='merged', ncnn='conv')
    assert get_backend('ncnn', parc_form='matmul').parc_form == 'matmul'
