import mmdet
from mmdet.models.dense_heads import SSDHead

from mmfalcon.compat import ssd_head_cannot_predict
from mmfalcon.registry import MODELS, register


@register(MODELS)
class PredictableSSDHead(SSDHead):
    """mmdet's ``SSDHead``, able to predict on every supported mmdet.

    mmdet <= 3.3.0's ``SSDHead`` never sets ``loss_cls``, which prediction
    reads (see :mod:`mmfalcon.compat`). SSD computes its classification
    loss itself, so there is no ``loss_cls`` module; ``None`` tells the
    shared prediction code to use the plain softmax of
    ``use_sigmoid_cls=False``. On a fixed mmdet this class is ``SSDHead``.
    """
    if ssd_head_cannot_predict(mmdet.__version__):
        loss_cls = None
