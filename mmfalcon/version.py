__version__ = '0.1.0'

# The OpenMMLab versions mmfalcon supports, [minimum, maximum): import name
# -> (distribution name, minimum, maximum). setup.py's requirements and the
# import guard of ``mmfalcon/__init__.py`` both read this table.
SUPPORTED_VERSIONS = {
    'mmcv': ('mmcv', '2.0.0rc4', '2.2.0'),
    'mmengine': ('mmengine', '0.7.1', '1.0.0'),
    'mmdet': ('mmdet', '3.0.0', '3.4.0'),
    'mmseg': ('mmsegmentation', '1.0.0', '1.3.0'),
}
# mmdet and mmseg are optional (the ``det`` and ``seg`` extras).
OPTIONAL_PACKAGES = ('mmdet', 'mmseg')
