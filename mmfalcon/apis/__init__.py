from .inference import dataset_meta, draw_result, inference, model_task
from .model import init_model

__all__ = ['init_model', 'inference', 'draw_result', 'dataset_meta',
           'model_task']
