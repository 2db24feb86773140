from . import compat  # noqa: F401  (applies the stack fixes on import)
from . import fileio  # noqa: F401  (registers the checkpoint loader)
from . import datasets  # noqa: F401  (registers the VOC dataset)
from .models import fuse_model, is_fused
from .version import __version__

__all__ = ['__version__', 'fuse_model', 'is_fused']
