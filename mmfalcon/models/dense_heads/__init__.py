from .ssd_head import PredictableSSDHead

__all__ = ['PredictableSSDHead']
