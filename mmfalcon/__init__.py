from .compat import check_versions

check_versions()  # one clear line on an unsupported mmcv/mmengine/mmdet/mmseg

from . import datasets  # noqa: E402,F401  (registers the VOC dataset)
from . import fileio  # noqa: E402,F401  (registers the checkpoint loader)
from .models import fuse_model, is_fused  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ['__version__', 'fuse_model', 'is_fused']
