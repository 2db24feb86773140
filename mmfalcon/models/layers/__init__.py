from .conv_norm import ConvNorm
from .fasternet_block import FasterNetBlock
from .inverted_residual import InvertedResidual
from .parc import (ChannelAttention, ParC, ParCBlock, ParCFused,
                   ParCOuterFrame, PreNormConv)
from .repso import RepSO
from .sandglass import SandglassBlock
from .sfconv import (FactorizedPointwise, RefCO, SFConv, best_window,
                     is_feasible_window, sfconv_params)

__all__ = [
    'ConvNorm', 'InvertedResidual', 'FasterNetBlock', 'SandglassBlock',
    'RepSO', 'SFConv', 'RefCO', 'FactorizedPointwise', 'best_window',
    'is_feasible_window', 'sfconv_params', 'ParC', 'ParCFused', 'ParCBlock',
    'ParCOuterFrame', 'PreNormConv', 'ChannelAttention'
]
