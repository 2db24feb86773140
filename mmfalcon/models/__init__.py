from . import backbones, layers
from .backbones import *  # noqa: F401,F403
from .fusion import (FusableLayer, bn_scale_shift, fold_conv_bn, fuse_model,
                     identity_kernel, is_fused, pad_kernel)
from .layers import *  # noqa: F401,F403

__all__ = backbones.__all__ + layers.__all__ + [
    'FusableLayer', 'fuse_model', 'is_fused', 'bn_scale_shift',
    'fold_conv_bn', 'identity_kernel', 'pad_kernel'
]
