from .synthetic_shapes import CLASSES as SHAPE_CLASSES
from .synthetic_shapes import (make_coco_shapes, make_voc_shapes,
                               render_scene, shapes_palette)

try:  # mmseg is optional for detection-only users
    from .voc import CheckedPascalVOCDataset
except ImportError:
    CheckedPascalVOCDataset = None

__all__ = [
    'CheckedPascalVOCDataset',
    'SHAPE_CLASSES', 'make_coco_shapes', 'make_voc_shapes', 'render_scene',
    'shapes_palette'
]
