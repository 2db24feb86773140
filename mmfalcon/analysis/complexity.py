"""Parameters and FLOPs of a detector / segmentor, unfused and fused."""
import copy
from collections import OrderedDict
from typing import Dict, Sequence

import torch.nn as nn

from mmfalcon.deployment.wrapper import TensorForward
from mmfalcon.engine.deploy import switch_to_deploy
from .benchmark import BenchmarkRow, count_flops, count_params

RATIO_COLUMNS = ('params x unfused', 'FLOPs x unfused')


def measure_complexity(model: nn.Module,
                       shape: Sequence[int]) -> Dict[str, BenchmarkRow]:
    """Params and FLOPs of the backbone and of the whole model.

    The whole model is its tensor forward (backbone, neck, head; no
    preprocessing or post-processing, see
    :class:`~mmfalcon.deployment.TensorForward`). FLOPs follow mmengine's
    ``FlopAnalyzer`` (one multiply-add counts as one FLOP). The fused rows
    measure a fused copy; ``model`` itself is left as it is.

    Args:
        model (nn.Module): An mmdet detector or mmseg segmentor with a
            ``backbone``, unfused (a fused one gives equal rows).
        shape (Sequence[int]): Input shape ``(N, C, H, W)``.

    Returns:
        dict[str, BenchmarkRow]: Rows ``backbone unfused``,
        ``backbone fused``, ``model unfused``, ``model fused``, in that
        order; the fused rows carry the fused / unfused ratios in
        ``ratios`` (:data:`RATIO_COLUMNS`).
    """
    if not isinstance(getattr(model, 'backbone', None), nn.Module):
        raise TypeError(f'{type(model).__name__} has no backbone; expected '
                        f'an mmdet detector or an mmseg segmentor')
    forms = dict(unfused=model.eval(),
                 fused=switch_to_deploy(copy.deepcopy(model)).eval())
    rows: Dict[str, BenchmarkRow] = OrderedDict()
    for part in ('backbone', 'model'):
        for form, net in forms.items():
            module = net.backbone if part == 'backbone' else TensorForward(
                net)
            row = BenchmarkRow(f'{part} {form}', params=count_params(module),
                               flops=count_flops(module, shape))
            if form == 'fused':
                ref = rows[f'{part} unfused']
                row.ratios = {
                    RATIO_COLUMNS[0]: row.params / ref.params,
                    RATIO_COLUMNS[1]: row.flops / ref.flops
                }
            rows[row.name] = row
    return rows
