"""Bytes per inference counted on the exported graph, layer by layer, with
activations fused and shape-only ops free."""
import torch.nn as nn

from mmfalcon.analysis import memory_bandwidth, onnx_traffic
from mmfalcon.deployment import export_module


def test_conv_relu_conv_bytes_by_hand(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), nn.Flatten())
    path = str(tmp_path / 'm.onnx')
    export_module(model, (1, 3, 16, 16), path)
    pixels, f32 = 16 * 16, 4
    # conv 1 reads the image, writes 8 channels; the ReLU is fused into it;
    # conv 2 reads those 8 channels and writes 4; Flatten is a view
    activations = (3 + 8 + 8 + 4) * pixels * f32
    weights = (8 * 3 * 9 + 8 + 4 * 8 + 4) * f32
    assert onnx_traffic(path) == dict(activations=activations,
                                      weights=weights,
                                      total=activations + weights,
                                      by_op=dict(Conv=activations + weights))


def test_an_unfused_elementwise_op_counts(tmp_path):
    """A residual Add reads both inputs and writes its output."""

    class Residual(nn.Module):

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1, bias=False)

        def forward(self, x):
            return x + self.conv(x)

    path = str(tmp_path / 'r.onnx')
    export_module(Residual(), (1, 4, 8, 8), path)
    tensor = 4 * 8 * 8 * 4
    traffic = onnx_traffic(path)
    assert traffic['activations'] == 2 * tensor + 3 * tensor
    assert traffic['weights'] == 4 * 4 * 4
    assert traffic['by_op'] == dict(Add=3 * tensor, Conv=2 * tensor + 64)


def test_memory_bandwidth_is_a_rate():
    assert memory_bandwidth(megabytes=8, repeats=1) > 0
