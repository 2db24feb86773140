"""The stack fixes in mmfalcon.compat; each test fails without its fix."""
import pytest
import torch

import mmfalcon  # noqa: F401  (applies the fixes)


def _ssd_head_cfg(head_type):
    from mmengine.config import ConfigDict
    return ConfigDict(
        type=head_type, in_channels=(8, 8), num_classes=3,
        use_depthwise=True, norm_cfg=dict(type='BN'),
        act_cfg=dict(type='ReLU6'),
        anchor_generator=dict(
            type='SSDAnchorGenerator', scale_major=False, strides=[16, 32],
            ratios=[[2], [2]], min_sizes=[16, 32], max_sizes=[32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                        target_means=[.0, .0, .0, .0],
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        test_cfg=dict(nms_pre=100, nms=dict(type='nms', iou_threshold=0.45),
                      min_bbox_size=0, score_thr=0.02, max_per_img=20))


def _predict(head):
    feats = (torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2))
    cls_scores, bbox_preds = head.eval()(feats)
    metas = [dict(img_shape=(64, 64), scale_factor=(1.0, 1.0))]
    return head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=metas,
                                rescale=False)


def test_ssd_head_predicts():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    results = _predict(MODELS.build(_ssd_head_cfg('PredictableSSDHead')))
    assert len(results) == 1
    assert results[0].bboxes.shape[1] == 4
    assert (results[0].labels < 3).all()
    # the upstream bug this works around is still present in mmdet 3.3.0
    with pytest.raises(AttributeError, match='loss_cls'):
        _predict(MODELS.build(_ssd_head_cfg('SSDHead')))
