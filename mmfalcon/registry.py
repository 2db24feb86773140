"""mmfalcon's registry scope, ``'mmfalcon'``.

Child registries of MMEngine's root ones. Their ``locations`` import the
package, so ``type='mmfalcon.FalconNet'`` builds from mmdet's or mmseg's
registries without ``custom_imports`` (mmengine imports
``mmfalcon.registry`` when it meets the scope) and ``default_scope=
'mmfalcon'`` works (mmdet's and mmseg's own modules then take their scope
prefix, ``'mmdet.SSD'``, as in mmyolo's configs).

:func:`register` also puts each class into MMEngine's root registry, the
parent of every downstream one, so that a plain ``type='FalconNet'`` still
resolves from mmdet's or mmseg's scope after
``custom_imports=dict(imports=['mmfalcon.models'])``.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS,
                  locations=['mmfalcon.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS,
                    locations=['mmfalcon.datasets'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS,
                 locations=['mmfalcon.engine'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS,
                          locations=['mmfalcon.engine'])


def register(registry: Registry):
    """Class decorator: register into ``registry`` (scope ``mmfalcon``) and
    into its parent, MMEngine's root registry."""

    def wrap(cls):
        registry.register_module(module=cls)
        registry.parent.register_module(module=cls)
        return cls

    return wrap
