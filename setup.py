from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open('mmfalcon/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def read_requirements(path):
    with open(path) as f:
        return [line.strip() for line in f
                if line.strip() and not line.startswith('#')]


setup(
    name='mmfalcon',
    version=read_version(),
    description='FalconNet and ParC-Net lightweight backbones for '
    'MMDetection and MMSegmentation',
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    python_requires='>=3.8',
    install_requires=['mmcv>=2.0.0,<2.2.0'] +
    read_requirements('requirements/runtime.txt'),
    extras_require=dict(
        tests=read_requirements('requirements/tests.txt'),
        deploy=['onnx', 'onnxruntime']),
)
