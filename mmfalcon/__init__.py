from . import compat  # noqa: F401  (applies the stack fixes on import)
from . import datasets  # noqa: F401  (registers the VOC dataset)
from .engine import is_deployed, switch_to_deploy
from .version import __version__

__all__ = ['__version__', 'switch_to_deploy', 'is_deployed']
