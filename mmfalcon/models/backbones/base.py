import copy
import warnings

from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint_form import match_fused_checkpoint
from ..fusion import fuse_model, is_fused


def default_init_cfg(init_cfg, pretrained):
    """mmseg copies a model-level ``pretrained`` into the backbone config;
    turn it into the ``init_cfg`` that MMEngine understands."""
    if pretrained is not None:
        if not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be a str or None, got '
                            f'{type(pretrained).__name__}')
        warnings.warn('`pretrained` is deprecated, use '
                      '`init_cfg=dict(type="Pretrained", checkpoint=...)`')
        return dict(type='Pretrained', checkpoint=pretrained)
    if init_cfg is None:
        return [
            dict(type='Kaiming', layer='Conv2d'),
            dict(type='Constant', val=1, layer=['_BatchNorm'])
        ]
    return init_cfg


def check_batch_norm(norm_cfg, owner):
    """Refuse a ``norm_cfg`` that does not build a batch norm.

    Fusing folds each norm's running statistics into a conv, which only a
    batch norm has; a group or layer norm would train, then fail at fusion.
    """
    layer_type = norm_cfg.get('type') if isinstance(norm_cfg, dict) else None
    if isinstance(layer_type, str):
        # resolved as mmcv's build_norm_layer does: in the root registry
        with MODELS.switch_scope_and_registry(None) as registry:
            layer_type = registry.get(layer_type)
    if not (isinstance(layer_type, type)
            and issubclass(layer_type, _BatchNorm)):
        raise ValueError(
            f'{owner} needs a batch norm (its fusion folds running '
            f'statistics into convs), got norm_cfg={norm_cfg!r}; expected '
            f"e.g. dict(type='BN') or dict(type='SyncBN').")


class FusableBackbone(BaseModule):
    """What FalconNet and ParC-Net share: arch parsing, the batch-norm
    check, ``frozen_stages`` / ``norm_eval`` handling in ``train()`` and
    ``switch_to_deploy()``.

    Subclasses define ``arch_zoo`` and ``arch_keys``, set ``frozen_stages``
    and ``norm_eval``, and implement :meth:`_check_arch` (the values of a
    custom arch) and :meth:`_stages` (the modules in freezing order).
    """
    arch_zoo: dict = {}
    arch_keys: tuple = ()

    def _parse_arch(self, arch):
        """An ``arch_zoo`` name, or a dict with exactly ``arch_keys``.

        Returns a deep copy: the caller may change it without touching
        ``arch_zoo`` (shared by every instance) or the caller's dict.
        """
        if isinstance(arch, str):
            if arch not in self.arch_zoo:
                raise ValueError(f'Unknown arch {arch!r}; expected one of '
                                 f'{sorted(self.arch_zoo)} or a dict.')
            return copy.deepcopy(self.arch_zoo[arch])
        if not isinstance(arch, dict):
            raise ValueError(f'arch must be a str or a dict, got {arch!r}.')
        missing = [key for key in self.arch_keys if key not in arch]
        extra = sorted(set(arch) - set(self.arch_keys))
        if missing or extra:
            raise ValueError(
                f'Custom arch dict must have exactly the keys '
                f'{list(self.arch_keys)}; missing {missing}, '
                f'unexpected {extra}.')
        self._check_arch(arch)
        return copy.deepcopy(dict(arch))

    def _check_arch(self, arch):
        raise NotImplementedError

    def _stages(self):
        raise NotImplementedError

    def _freeze_stages(self):
        for module in self._stages()[:self.frozen_stages + 1]:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    @property
    def deploy(self) -> bool:
        """Whether every fusable layer is fused (mmpretrain's name)."""
        return is_fused(self)

    def switch_to_deploy(self):
        """Fuse in place (idempotent); mmpretrain's name for
        :func:`mmfalcon.fuse_model`."""
        fuse_model(self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # loaded on its own (init_cfg=Pretrained, load_state_dict), a
        # backbone takes the form of the checkpoint; inside a model, the
        # model's own load pre-hook has already done so
        match_fused_checkpoint(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
