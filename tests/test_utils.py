import os.path as osp

import pytest

from mmfalcon.utils import config_file


@pytest.mark.parametrize('name', ['ssdlite_falcon_coco.py',
                                  'demo/ssdlite_falcon_shapes.py'])
def test_config_file_finds_shipped_config(config_path, name):
    assert osp.samefile(config_file(name), config_path(name))


def test_config_file_names_the_missing_config():
    with pytest.raises(FileNotFoundError, match="no config 'nope.py'"):
        config_file('nope.py')
