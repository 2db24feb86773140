"""Convert official ParC-Net (hkzhang91/ParC-Net, "edgeformer") weights to
:class:`~mmfalcon.models.backbones.parcnet.ParCNet` key names.

The official model stores the last stage's downsampling MV2 block twice
(``residual.*`` aliases ``layer_5.0.*``) and has a classifier; neither
belongs in a backbone checkpoint.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

from mmfalcon.models import ParCNet

_CONV = {'conv': 'conv', 'norm': 'bn'}
_MV2 = {'exp_1x1': 'expand', 'conv_3x3': 'depthwise', 'red_1x1': 'project'}
# Official ParC block member -> ours (half 1 = H then W, half 2 = W then H).
_PARC = {
    'meta_kernel_1_H': 'mixer_hw.0.kernel',
    'meta_pe_1_H': 'mixer_hw.0.pe',
    'pre_Norm_1': 'mixer_hw.0.norm',
    'meta_kernel_2_W': 'mixer_hw.1.kernel',
    'meta_pe_2_W': 'mixer_hw.1.pe',
    'meta_kernel_1_W': 'mixer_wh.0.kernel',
    'meta_pe_1_W': 'mixer_wh.0.pe',
    'pre_Norm_2': 'mixer_wh.0.norm',
    'meta_kernel_2_H': 'mixer_wh.1.kernel',
    'meta_pe_2_H': 'mixer_wh.1.pe',
    'ffn.0': 'ffn.0.pre_norm',
    'ffn.1': 'ffn.0.conv',
    'ffn.4': 'ffn.2',
    'ca.fc.0': 'ca.squeeze.conv',
    'ca.fc.1': 'ca.squeeze.bn',
    'ca.fc.3': 'ca.excite.conv',
    'ca.fc.4': 'ca.excite.bn',
}
_PARC_RE = re.compile(r'^(meta_(?:kernel|pe)_\d_[HW]|pre_Norm_\d|ffn\.\d|'
                      r'ca\.fc\.\d)(\.[^.]+)?$')
_STAGE_RE = re.compile(r'^layer_(\d+)\.1\.spatial_global_rep\.(\d+)\.(.+)$')
_BLOCK_KERNEL_RE = re.compile(
    r'^layer_(\d+)\.1\.spatial_global_rep\.(\d+)\.meta_kernel_1_H$')
_SIMPLE_RULES = [
    (re.compile(r'^conv_1\.block\.(conv|norm)\.(.+)$'),
     lambda m: f'stem.{_CONV[m[1]]}.{m[2]}'),
    (re.compile(r'^conv_1x1_exp\.block\.(conv|norm)\.(.+)$'),
     lambda m: f'conv_1x1_exp.{_CONV[m[1]]}.{m[2]}'),
    (re.compile(r'^layer_(\d+)\.(\d+)\.block\.(exp_1x1|conv_3x3|red_1x1)'
                r'\.block\.(conv|norm)\.(.+)$'),
     lambda m: f'layer{m[1]}.{m[2]}.{_MV2[m[3]]}.{_CONV[m[4]]}.{m[5]}'),
    (re.compile(r'^layer_(\d+)\.1\.dim_adaptive\.0\.block\.(conv|norm)'
                r'\.(.+)$'),
     lambda m: f'layer{m[1]}.1.local_rep.{_CONV[m[2]]}.{m[3]}'),
    (re.compile(r'^layer_(\d+)\.1\.dim_adaptive\.1\.block\.conv\.weight$'),
     lambda m: f'layer{m[1]}.1.proj.weight'),
    # PreNormConv names its post-conv norm ``norm``.
    (re.compile(r'^layer_(\d+)\.1\.channel_adaptive\.block\.(conv|norm)'
                r'\.(.+)$'),
     lambda m: f'layer{m[1]}.1.channel_adaptive.{m[2]}.{m[3]}'),
    (re.compile(r'^layer_(\d+)\.1\.local_global_fusion\.block\.(conv|norm)'
                r'\.(.+)$'),
     lambda m: f'layer{m[1]}.1.fusion.{_CONV[m[2]]}.{m[3]}'),
]


def unwrap_official_checkpoint(checkpoint) -> Dict[str, torch.Tensor]:
    """The state_dict of an official checkpoint (plain, or under
    ``'state_dict'`` / ``'model'``), without a DDP ``module.`` prefix."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'Expected a dict checkpoint, got '
                        f'{type(checkpoint).__name__}')
    for key in ('state_dict', 'model'):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    if checkpoint and all(k.startswith('module.') for k in checkpoint):
        checkpoint = {k[len('module.'):]: v for k, v in checkpoint.items()}
    return OrderedDict(checkpoint)


def drop_official_extras(
        state_dict: Dict[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Drop the ``residual.*`` alias and the classifier.

    Returns the remaining state_dict and ``{'residual': keys, 'classifier':
    keys}``. Raises ``ValueError`` if ``residual.*`` is not an exact copy of
    the last stage's first block, i.e. not the alias it should be.
    """
    layers = [int(m[1]) for k in state_dict
              for m in [re.match(r'^layer_(\d+)\.', k)] if m]
    alias = f'layer_{max(layers)}.0.' if layers else None
    dropped = {'residual': [], 'classifier': []}
    kept = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith('residual.'):
            twin = alias + key[len('residual.'):] if alias else None
            if twin not in state_dict or not torch.equal(
                    state_dict[twin], value):
                raise ValueError(
                    f'{key!r} is not a copy of {twin!r}; the official '
                    '`residual` module should alias the last stage\'s '
                    'downsampling block.')
            dropped['residual'].append(key)
        elif key.startswith('classifier.'):
            dropped['classifier'].append(key)
        else:
            kept[key] = value
    return kept, dropped


def detect_parcnet_arch(state_dict: Dict[str, torch.Tensor]) -> str:
    """Name of the :attr:`ParCNet.arch_zoo` entry an official state_dict
    matches, from the widths and depths of its ParC stages."""
    stages = {}
    for key, value in state_dict.items():
        m = re.match(r'^layer_(\d+)\.1\.dim_adaptive\.0\.block\.conv\.weight$',
                     key)
        if m:
            stages.setdefault(int(m[1]), [0, 0])[0] = value.shape[0]
        m = _BLOCK_KERNEL_RE.match(key)
        if m:
            stages.setdefault(int(m[1]), [0, 0])[1] += 1
    found = [tuple(stages[i]) for i in sorted(stages)]
    for name, arch in ParCNet.arch_zoo.items():
        expected = [(row[1], row[3]) for row in arch['parc_layers']]
        if found == expected:
            return name
    raise ValueError(
        f'The checkpoint matches no ParCNet arch: its ParC stages have '
        f'(width, blocks) = {found}; known archs: '
        + ', '.join(f'{n}: {[(r[1], r[3]) for r in a["parc_layers"]]}'
                    for n, a in ParCNet.arch_zoo.items()))


def _map_key(key: str, final_norm: Dict[int, int]) -> Optional[str]:
    m = _STAGE_RE.match(key)
    if m:
        stage, index, rest = int(m[1]), int(m[2]), m[3]
        prefix = f'layer{stage}.1'
        if index == final_norm.get(stage):
            # The BN after the last ParC block feeds the channel adapter.
            return f'{prefix}.channel_adaptive.pre_norm.{rest}'
        p = _PARC_RE.match(rest)
        if p is None:
            return None
        return f'{prefix}.blocks.{index}.{_PARC[p[1]]}{p[2] or ""}'
    for pattern, target in _SIMPLE_RULES:
        m = pattern.match(key)
        if m:
            return target(m)
    return None


def convert_official_parcnet(
        state_dict: Dict[str, torch.Tensor],
        arch: Optional[str] = None
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Map an official ParC-Net state_dict to :class:`ParCNet` names.

    Args:
        state_dict (dict): Official state_dict (see
            :func:`unwrap_official_checkpoint`). ``residual.*`` and the
            classifier are dropped (see :func:`drop_official_extras`).
        arch (str | None): The arch the weights must be ('s' or 'xs');
            ``None`` accepts any known arch.

    Returns:
        tuple: The converted state_dict and the official keys that could
        not be mapped (left out of the result).
    """
    state_dict, _ = drop_official_extras(state_dict)
    detected = detect_parcnet_arch(state_dict)
    if arch is not None and arch != detected:
        raise ValueError(
            f'The checkpoint is ParC-Net-{detected.upper()} (arch '
            f'{detected!r}) but arch {arch!r} was expected.')
    # Index of the final BN in each stage = its number of ParC blocks.
    final_norm = {}
    for key in state_dict:
        m = _BLOCK_KERNEL_RE.match(key)
        if m:
            final_norm[int(m[1])] = final_norm.get(int(m[1]), 0) + 1
    converted, unmapped = OrderedDict(), []
    for key, value in state_dict.items():
        new_key = _map_key(key, final_norm)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = value.clone()
    return converted, unmapped
