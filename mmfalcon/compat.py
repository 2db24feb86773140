"""What the installed OpenMMLab stack needs, decided by version.

* :func:`check_versions` stops ``import mmfalcon`` on an unsupported mmcv,
  mmengine, mmdet or mmseg with one line (mmdet and mmseg are checked only
  when installed).
* :func:`ssd_head_cannot_predict`: mmdet <= 3.3.0's ``SSDHead`` skips
  ``AnchorHead.__init__`` and never sets ``loss_cls``, which
  ``BaseDenseHead._predict_by_feat_single`` reads, so SSD cannot predict
  (mmdet#11063, #11305, #11780); ``PredictableSSDHead`` fixes it there only.
"""
import importlib
import importlib.util
from typing import Optional

from mmengine.utils import digit_version

from .version import OPTIONAL_PACKAGES, SUPPORTED_VERSIONS

# The last mmdet release whose SSDHead cannot predict.
SSD_HEAD_LAST_BROKEN = '3.3.0'


def installed_version(package: str) -> Optional[str]:
    """``package.__version__``, or None when an optional package is absent.

    An ImportError raised inside an installed package propagates.
    """
    if (package in OPTIONAL_PACKAGES
            and importlib.util.find_spec(package) is None):
        return None
    return importlib.import_module(package).__version__


def check_versions() -> None:
    """Raise ImportError naming the first unsupported installed package."""
    for package, (dist, minimum, maximum) in SUPPORTED_VERSIONS.items():
        version = installed_version(package)
        if version is None:
            continue
        if not (digit_version(minimum) <= digit_version(version) <
                digit_version(maximum)):
            raise ImportError(
                f'mmfalcon does not support {dist}=={version}: it needs '
                f'{dist}>={minimum},<{maximum}.')


def ssd_head_cannot_predict(mmdet_version: str) -> bool:
    """Whether mmdet ``mmdet_version``'s ``SSDHead`` lacks ``loss_cls``."""
    return digit_version(mmdet_version) <= digit_version(SSD_HEAD_LAST_BROKEN)
