"""``compile=True`` in a config: each backbone's training forward traces
into one graph (``fullgraph=True`` fails on any graph break, such as a log
call or an untraceable branch) and the compiled training step computes
what the eager one does, outputs and gradients, in float64.

The ``aot_eager`` backend traces forward and backward as inductor does
but runs the traced ops eagerly, so this checks the tracing in seconds
instead of inductor's minutes of code generation."""
import copy

import pytest
import torch

from mmfalcon.models import FalconNet, ParCNet

NARROW_PARCNET = dict(
    stem_channels=8, mv2_layers=[[8, 1, 1], [16, 1, 2]],
    parc_layers=[[16, 16, 32, 1, 16], [24, 24, 48, 1, 8],
                 [32, 32, 64, 1, 4]],
    fusion='add', head_channels=64)


@pytest.mark.slow
@pytest.mark.parametrize('build', [
    lambda: FalconNet('tiny', out_indices=(2, 3)),
    # dropout off: eager and compiled would draw other masks
    lambda: ParCNet(NARROW_PARCNET, out_indices=(4, 5), drop_rate=0.),
], ids=['falconnet', 'parcnet'])
def test_training_step_compiles_into_one_graph(build):
    torch.manual_seed(0)
    eager = build().double().train()
    compiled = copy.deepcopy(eager)
    step = torch.compile(compiled, backend='aot_eager', fullgraph=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)

    def run(model):
        outs = model(x)
        sum(out.square().mean() for out in outs).backward()
        return outs

    expected, actual = run(eager), run(step)
    for ours, theirs in zip(expected, actual):
        torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-10)
    grads = 0
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert (q.grad is None) == (p.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-10,
                                       atol=1e-10, msg=name)
            grads += 1
    assert grads > len(list(eager.parameters())) // 2
    # running statistics updated alike
    for (name, a), b in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.slow
def test_traced_training_step_writes_no_slices():
    """Traced for compiling, a write into a slice of a tensor becomes a
    copy of the whole tensor (``slice_scatter``): the patch moments once
    made the compiled FalconNet step 2.9x slower than eager that way, even
    before inductor generated any code."""
    from torch._functorch.aot_autograd import aot_module_simplified
    ops = set()

    def record(graph, _):
        ops.update(str(node.target) for node in graph.graph.nodes
                   if node.op == 'call_function')
        return graph.forward

    def backend(graph, inputs):
        return aot_module_simplified(graph, inputs, fw_compiler=record,
                                     bw_compiler=record)

    model = torch.compile(FalconNet('tiny', out_indices=(2, 3)).train(),
                          backend=backend, fullgraph=True)
    sum(out.mean() for out in model(torch.randn(2, 3, 32, 32))).backward()
    assert any('convolution' in op for op in ops)  # the step was traced
    assert not any('slice_scatter' in op for op in ops), sorted(ops)
