"""The README's recipes: mmdet's RetinaNet (FPN) and mmseg's Semantic FPN on
either backbone, the neck's in_channels being the backbone's out_channels."""
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

RETINANET = '''
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(_delete_=True, type='mmfalcon.{backbone}', arch='{arch}',
                  out_indices={out_indices}),
    neck=dict(in_channels={in_channels}, start_level=0))
'''

SEMANTIC_FPN = '''
_base_ = 'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'
model = dict(
    pretrained=None,
    backbone=dict(_delete_=True, type='mmfalcon.{backbone}', arch='{arch}',
                  out_indices={out_indices}),
    neck=dict(in_channels={in_channels}))
'''

# (recipe, scope, backbone, arch, out_indices, out_channels in the README)
CASES = [
    (RETINANET, 'mmdet', 'FalconNet', 'base', (1, 2, 3), [64, 128, 256]),
    (RETINANET, 'mmdet', 'ParCNet', 's', (3, 4, 5), [96, 128, 160]),
    (SEMANTIC_FPN, 'mmseg', 'FalconNet', 'base', (0, 1, 2, 3),
     [32, 64, 128, 256]),
    (SEMANTIC_FPN, 'mmseg', 'ParCNet', 's', (2, 3, 4, 5),
     [64, 96, 128, 160]),
]


@pytest.mark.parametrize('recipe,scope,backbone,arch,out_indices,channels',
                         CASES)
def test_readme_recipe_builds_and_runs(tmp_path, recipe, scope, backbone,
                                       arch, out_indices, channels):
    path = tmp_path / 'config.py'
    path.write_text(recipe.format(backbone=backbone, arch=arch,
                                  out_indices=out_indices,
                                  in_channels=channels))
    cfg = Config.fromfile(str(path))
    init_default_scope(scope)
    model = MODELS.build(cfg.model).eval()
    assert list(model.backbone.out_channels) == channels
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 128, 128))
    assert len(feats) == cfg.model.neck.num_outs
    assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)
