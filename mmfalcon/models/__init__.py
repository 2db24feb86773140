import importlib.util

from . import backbones, layers
from .backbones import *  # noqa: F401,F403
from .checkpoint_form import (CheckpointMismatchError, fuse_to_match,
                              match_fused_checkpoint)
from .fusion import (FusableLayer, bn_scale_shift, fold_conv_bn, fuse_model,
                     identity_kernel, is_fused, pad_kernel)
from .layers import *  # noqa: F401,F403

__all__ = backbones.__all__ + layers.__all__ + [
    'CheckpointMismatchError', 'fuse_to_match', 'match_fused_checkpoint',
    'FusableLayer', 'fuse_model', 'is_fused', 'bn_scale_shift',
    'fold_conv_bn', 'identity_kernel', 'pad_kernel'
]

# mmdet is optional (the ``det`` extra); an error inside an installed mmdet
# must surface, so only its absence is tested.
if importlib.util.find_spec('mmdet') is not None:
    from .dense_heads import PredictableSSDHead  # noqa: F401
    __all__ += ['PredictableSSDHead']
