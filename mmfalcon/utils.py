"""Where the installed package keeps its configs and tools."""
import os.path as osp

MIM_DIR = osp.join(osp.dirname(osp.abspath(__file__)), '.mim')


def config_file(name: str) -> str:
    """The path of config ``name`` shipped with mmfalcon, e.g.
    ``config_file('ssdlite_falcon_coco.py')`` or
    ``config_file('demo/ssdlite_falcon_shapes.py')``; works for a wheel
    install (configs copied under ``mmfalcon/.mim``) and an editable one
    (linked there).

    Args:
        name (str): The config's path relative to the repository's
            ``configs/`` folder.

    Raises:
        FileNotFoundError: when no shipped config has that name.
    """
    path = osp.join(MIM_DIR, 'configs', name)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'mmfalcon ships no config {name!r} (looked in '
            f'{osp.join(MIM_DIR, "configs")}); names are relative to the '
            "repository's configs/ folder, e.g. "
            "'ssdlite_falcon_coco.py'.")
    return path
