from .fasternet_block import FasterNetBlock
from .inverted_residual import InvertedResidual
from .parc import (ChannelAttention, ParC, ParCBlock, ParCFused,
                   ParCOuterFrame, PreNormConv)
from .reparam import (ConvNorm, Reparameterizable, bn_scale_shift,
                      fuse_conv_bn, identity_kernel, pad_kernel)
from .repso import RepSO
from .sfconv import (FactorizedPointwise, RefCO, SFConv, best_window,
                     is_feasible_window, sfconv_params)

__all__ = [
    'Reparameterizable', 'ConvNorm', 'InvertedResidual', 'FasterNetBlock',
    'RepSO', 'SFConv', 'RefCO', 'FactorizedPointwise', 'best_window',
    'is_feasible_window', 'sfconv_params', 'bn_scale_shift', 'fuse_conv_bn',
    'identity_kernel', 'pad_kernel'
]
__all__ += [
    'ParC', 'ParCFused', 'ParCBlock', 'ParCOuterFrame', 'PreNormConv',
    'ChannelAttention'
]
