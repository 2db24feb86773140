"""mmfalcon's setup: OpenMMLab layout, configs and tools shipped in the wheel.

Like mmdet's, the wheel carries ``mmfalcon/.mim/{configs,tools,
model-index.yml}`` so that ``mim`` and mmengine's ``mmfalcon::`` config
prefix find them in an installed package; an editable install links them.
The sdist carries that copy (MANIFEST.in), and a wheel built from the
unpacked sdist reuses it.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

MIM_FILES = ('configs', 'tools', 'model-index.yml')


def read_version_file():
    namespace = {}
    with open('mmfalcon/version.py') as f:
        exec(f.read(), namespace)
    return namespace


VERSION_FILE = read_version_file()


def supported(package):
    """The pip spec of an OpenMMLab package's supported range, from the
    table the import guard reads too."""
    dist, minimum, maximum = VERSION_FILE['SUPPORTED_VERSIONS'][package]
    return f'{dist}>={minimum},<{maximum}'


def read_requirements(path):
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip()]


def add_mim_extension():
    """Put configs, tools and model-index.yml under ``mmfalcon/.mim``:
    copies for a wheel or sdist, links for an editable install."""
    if {'develop', 'editable_wheel'} & set(sys.argv):
        mode = 'symlink'
    elif {'sdist', 'bdist_wheel'} & set(sys.argv):
        mode = 'copy'
    else:
        return
    root = osp.dirname(osp.abspath(__file__))
    mim_dir = osp.join(root, 'mmfalcon', '.mim')
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(root, name), osp.join(mim_dir, name)
        if not osp.exists(src):
            # an unpacked sdist holds the copy MANIFEST.in packed, not the
            # sources
            if not osp.exists(dst):
                raise FileNotFoundError(
                    f'{name}: neither {src} nor its packed copy {dst} '
                    'exists; build from a checkout or an sdist')
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_dir), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
                '__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


add_mim_extension()
setup(
    name='mmfalcon',
    version=VERSION_FILE['__version__'],
    description='FalconNet and ParC-Net lightweight backbones for '
    'MMDetection and MMSegmentation',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author='the mmfalcon authors',
    url='https://github.com/mmfalcon/mmfalcon',
    # PEP 639 (setuptools >= 77): an SPDX expression instead of a License
    # classifier, which setuptools rejects beside it
    license_expression='Apache-2.0',
    license_files=['LICENSE'],
    keywords=['computer vision', 'object detection', 'semantic segmentation',
              'backbone', 'structural re-parameterization', 'FalconNet',
              'ParC-Net', 'OpenMMLab'],
    classifiers=[
        'Development Status :: 3 - Alpha',
        'Operating System :: OS Independent',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3.9',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    include_package_data=True,
    package_data={'mmfalcon': ['.mim/**/*', '.mim/*']},
    python_requires='>=3.9',  # torch>=2.6 (requirements/runtime.txt)
    install_requires=[supported('mmengine'), supported('mmcv')] +
    read_requirements('requirements/runtime.txt'),
    extras_require=dict(
        det=[supported('mmdet')] + read_requirements('requirements/det.txt'),
        seg=[supported('mmseg')] + read_requirements('requirements/seg.txt'),
        deploy=read_requirements('requirements/deploy.txt'),
        openvino=read_requirements('requirements/openvino.txt'),
        ncnn=read_requirements('requirements/ncnn.txt'),
        tests=read_requirements('requirements/tests.txt')),
    zip_safe=False,
)
