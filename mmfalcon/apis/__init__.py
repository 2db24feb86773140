from .inference import dataset_meta, draw_result, inference, model_task

__all__ = ['inference', 'draw_result', 'dataset_meta', 'model_task']
