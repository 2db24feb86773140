import os.path as osp

import pytest

from mmfalcon.utils import config_file


def test_config_file_finds_shipped_config(config_path):
    path = config_file('demo/ssdlite_falcon_shapes.py')
    assert osp.samefile(path, config_path('demo/ssdlite_falcon_shapes.py'))


def test_config_file_names_the_missing_config():
    with pytest.raises(FileNotFoundError, match="no config 'nope.py'"):
        config_file('nope.py')
