from .synthetic_shapes import CLASSES as SHAPE_CLASSES
from .synthetic_shapes import make_coco_shapes, render_scene

__all__ = ['SHAPE_CLASSES', 'make_coco_shapes', 'render_scene']
