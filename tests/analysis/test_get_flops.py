"""Parameters and FLOPs, unfused and fused (tools/analysis/get_flops.py)."""
import pytest

from mmfalcon.analysis.complexity import (RATIO_COLUMNS, measure_complexity,
                                         unused_submodules)
from mmfalcon.apis import init_model
from mmfalcon.models import is_fused

DEMO = 'demo/ssdlite_falcon_shapes.py'


def test_fused_is_smaller_for_falconnet(config_path):
    model = init_model(config_path(DEMO), None, fuse=False)
    rows = measure_complexity(model, (1, 3, 128, 160))
    assert list(rows) == ['backbone unfused', 'backbone fused',
                          'model unfused', 'model fused']
    assert not is_fused(model)  # measured on a fused copy
    for part in ('backbone', 'model'):
        unfused, fused = rows[f'{part} unfused'], rows[f'{part} fused']
        assert 0 < fused.flops < unfused.flops, part
        assert 0 < fused.params < unfused.params, part
        assert fused.ratios[RATIO_COLUMNS[1]] == fused.flops / unfused.flops
    # the whole model contains the backbone
    assert rows['model fused'].flops > rows['backbone fused'].flops
    assert rows['model unfused'].params > rows['backbone unfused'].params


@pytest.mark.slow
def test_get_flops_tool(config_path, run_tool):
    out = run_tool('analysis/get_flops.py', config_path(DEMO), '--shape',
                   '96', '128', '--markdown')
    lines = out.stdout.splitlines()
    assert 'input [1, 3, 96, 128]' in lines[0]
    assert lines[1].startswith('| model | params (M) | FLOPs (G) |')
    assert 'median ms' not in lines[1]  # no latency measured, no column
    assert [line.split('|')[1].strip() for line in lines[3:7]] == [
        'backbone unfused', 'backbone fused', 'model unfused', 'model fused'
    ]


def test_unused_submodules_are_left_out_of_params():
    import torch.nn as nn

    class Net(nn.Module):

        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Conv2d(3, 4, 1)])  # not called
            self.aux = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU())

        def forward(self, x):
            return self.layers[0](x)

    assert unused_submodules(Net(), (1, 3, 4, 4)) == [('aux', 10)]
