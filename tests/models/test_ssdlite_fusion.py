"""The whole SSDLite detector: fused raw head outputs == unfused ones."""
import pytest
import torch
from mmengine.config import Config

import mmfalcon


def build_detector(config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    return MODELS.build(Config.fromfile(config).model)


@pytest.mark.parametrize('config,size,dtype', [
    ('ssdlite_falcon_coco.py', (160, 224), torch.float64),
    ('demo/ssdlite_falcon_shapes.py', (333, 517), torch.float32),
    ('ssdlite_parcnet_coco.py', (320, 320), torch.float32),
    ('ssdlite_parcnet_coco.py', (333, 517), torch.float32),
])
def test_ssdlite_fused_equals_unfused(config, size, dtype, randomize_bn,
                                      config_path):
    # Errors relative to each output's scale: untrained and with random BN
    # statistics the nets reach activations of ~1e4, where float32
    # rounding alone exceeds any fixed absolute bound. The paper-size
    # FalconNet (18 blocks) also runs in float64, for a tighter bound.
    x = torch.randn(1, 3, *size, dtype=dtype)
    model = randomize_bn(build_detector(config_path(config))).to(
        dtype).eval()
    with torch.no_grad():
        cls_before, box_before = model._forward(x)
        mmfalcon.fuse_model(model)
        cls_after, box_after = model._forward(x)
    assert mmfalcon.is_fused(model)
    tol = 1e-10 if dtype == torch.float64 else 1e-5  # x the largest output
    for before, after in zip(cls_before + box_before, cls_after + box_after):
        torch.testing.assert_close(
            after, before, rtol=0, atol=tol * before.abs().max().item())
