"""The whole SSDLite detector: fused raw head outputs == unfused ones."""
import pytest
import torch
from conftest import config_path
from mmengine.config import Config

import mmfalcon


def build_detector(config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    return MODELS.build(Config.fromfile(config_path(config)).model)


@pytest.mark.parametrize('config,size,dtype', [
    ('ssdlite_falcon_coco.py', (160, 224), torch.float64),
    ('demo/ssdlite_falcon_shapes.py', (333, 517), torch.float32),
    ('ssdlite_parcnet_coco.py', (320, 320), torch.float32),
    ('ssdlite_parcnet_coco.py', (333, 517), torch.float32),
])
def test_ssdlite_fused_equals_unfused(config, size, dtype, randomize_bn):
    # The paper-size net in float64: untrained, 18 blocks deep and with
    # random BN statistics, it reaches activations of ~1e4, where float32
    # rounding alone exceeds 1e-4. The shallow demo net runs in float32.
    x = torch.randn(1, 3, *size, dtype=dtype)
    model = randomize_bn(build_detector(config)).to(dtype).eval()
    with torch.no_grad():
        cls_before, box_before = model._forward(x)
        mmfalcon.fuse_model(model)
        cls_after, box_after = model._forward(x)
    assert mmfalcon.is_fused(model)
    for before, after in zip(cls_before + box_before, cls_after + box_after):
        err = (before - after).abs().max().item()
        assert err < 1e-4, err
