from .falconnet import FalconNet

__all__ = ['FalconNet']
