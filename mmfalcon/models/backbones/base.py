import copy
import warnings
from typing import Sequence

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
    check, one rule for ``out_indices`` and ``frozen_stages``,
    ``frozen_stages`` / ``norm_eval`` handling in ``train()`` and
    ``switch_to_deploy()``.

    Subclasses define ``arch_zoo`` and ``arch_keys``, implement
    :meth:`_check_arch` (the values of a custom arch), call
    :meth:`_parse_indices` before building their layers and set
    ``norm_eval``.
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

    def _parse_indices(self, out_indices, frozen_stages,
                       output_names: Sequence[str],
                       stage_names: Sequence[str]):
        """Check ``out_indices`` and ``frozen_stages`` by mmpretrain's rule
        and set them, with ``stage_names``.

        ``out_indices``: an int or a non-empty sequence of ints indexing
        ``output_names``, negative ones counting from the end (-1 the last
        output); kept non-negative, without duplicates, in increasing order
        (the order of the forward's outputs). ``frozen_stages``: -1 freezes
        nothing, k >= 0 the first k + 1 modules of ``stage_names`` (0 the
        stem alone), so -1..len(stage_names) - 1.

        Args:
            out_indices (int | Sequence[int]): The outputs to return.
            frozen_stages (int): The stages to freeze.
            output_names (Sequence[str]): Names of the outputs, by index.
            stage_names (Sequence[str]): Paths of the modules to freeze,
                stem first, in freezing order (for ``get_submodule``).

        Raises:
            ValueError: A value outside these ranges, named with the range.
        """
        num = len(output_names)
        valid = (f'expected ints in 0..{num - 1} (' + ', '.join(
            f'{i} {name}' for i, name in enumerate(output_names)) +
                 f') or -{num}..-1')
        indices = (out_indices, ) if isinstance(out_indices, int) else (
            out_indices)
        if not isinstance(indices, Sequence) or not indices:
            raise ValueError(f'out_indices={out_indices!r}: {valid}, at '
                             'least one.')
        for index in indices:
            if not isinstance(index, int) or not -num <= index < num:
                raise ValueError(f'out_indices contains {index!r}, out of '
                                 f'range: {valid}.')
        last = len(stage_names) - 1
        if not isinstance(frozen_stages,
                          int) or not -1 <= frozen_stages <= last:
            raise ValueError(
                f'frozen_stages={frozen_stages!r} out of range: expected '
                f'-1..{last} (-1 freezes nothing, k the first k + 1 of '
                f"{', '.join(stage_names)}).")
        self.out_indices = tuple(sorted({index % num for index in indices}))
        self.frozen_stages = frozen_stages
        self.stage_names = tuple(stage_names)

    def _freeze_stages(self):
        for name in self.stage_names[:self.frozen_stages + 1]:
            module = self.get_submodule(name)
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
