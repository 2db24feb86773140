"""Compatibility fixes for the pinned OpenMMLab stack, applied on import.

mmdet 3.3.0's ``SSDHead`` skips ``AnchorHead.__init__`` and never sets
    ``loss_cls``, which ``BaseDenseHead._predict_by_feat_single`` reads, so
SSD cannot predict (mmdet#11063, #11305, #11780). Our configs use
    :class:`PredictableSSDHead` instead.
"""
try:
    from mmdet.models.dense_heads import SSDHead
    from mmdet.registry import MODELS as MMDET_MODELS
except ImportError:  # mmdet is optional for segmentation-only users
    SSDHead = None

if SSDHead is not None:

    @MMDET_MODELS.register_module()
    class PredictableSSDHead(SSDHead):
        """mmdet's ``SSDHead`` that can run prediction (see module doc).

        SSD computes its classification loss itself, so there is no
        ``loss_cls`` module; ``None`` tells the shared prediction code to
        use the plain softmax of ``use_sigmoid_cls=False``.
        """
        loss_cls = None
