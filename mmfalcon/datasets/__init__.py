import importlib.util

from .synthetic_shapes import CLASSES as SHAPE_CLASSES
from .synthetic_shapes import (make_coco_shapes, make_voc_shapes,
                               render_scene, shapes_palette)

__all__ = [
    'SHAPE_CLASSES', 'make_coco_shapes', 'make_voc_shapes', 'render_scene',
    'shapes_palette'
]

# mmseg is optional (the ``seg`` extra); an error inside an installed mmseg
# must surface, so only its absence is tested.
if importlib.util.find_spec('mmseg') is not None:
    from .voc import CheckedPascalVOCDataset  # noqa: F401
    __all__ += ['CheckedPascalVOCDataset']
