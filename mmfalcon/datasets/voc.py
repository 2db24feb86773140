"""PASCAL VOC 2012 (+ SBD aug) with a clear error when data is missing."""
import os.path as osp

from mmseg.datasets import PascalVOCDataset

from mmfalcon.registry import DATASETS, register

# the preparation notes, linked from README.md
PREPARATION_DOC = ("docs/datasets.md (linked from README.md), section "
                   "'PASCAL VOC 2012 + SBD (aug)'")


@register(DATASETS)
class CheckedPascalVOCDataset(PascalVOCDataset):
    """mmseg's ``PascalVOCDataset`` that first checks its files exist.

    mmseg fails deep inside file listing or with a bare assertion; this
    names the first missing path (root, split list, image or mask folder)
    and where the docs explain how to build it. Arguments are those of
    ``PascalVOCDataset``.
    """

    def __init__(self, ann_file, data_root='', data_prefix=None, **kwargs):
        data_prefix = data_prefix or dict(img_path='', seg_map_path='')
        wanted = [data_root, osp.join(data_root, ann_file)] + [
            osp.join(data_root, data_prefix[key])
            for key in ('img_path', 'seg_map_path') if key in data_prefix
        ]
        for path in wanted:
            if path and not osp.exists(path):
                raise FileNotFoundError(
                    f'PASCAL VOC: {path!r} does not exist. See '
                    f'{PREPARATION_DOC} for downloading VOC2012 and SBD and '
                    'building the aug split.')
        super().__init__(ann_file=ann_file, data_root=data_root,
                         data_prefix=data_prefix, **kwargs)
