from .falconnet import FalconNet
from .parcnet import ParCNet

__all__ = ['FalconNet']
__all__ += ['ParCNet']
