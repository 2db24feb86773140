"""Parameters and FLOPs of a detector / segmentor, unfused and fused."""
import copy
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from mmfalcon.deployment.wrapper import TensorForward
from mmfalcon.models import fuse_model
from .benchmark import BenchmarkRow, count_flops, count_params

RATIO_COLUMNS = ('params x unfused', 'FLOPs x unfused')


@torch.no_grad()
def unused_submodules(module: nn.Module,
                      shape: Sequence[int]) -> List[Tuple[str, int]]:
    """Submodules whose parameters a forward pass never uses.

    E.g. a segmentor's ``auxiliary_head``, which trains but does not run
    at inference. A parameter counts as used when a module holding it
    directly is called; only the outermost unused module of a subtree is
    listed.

    Args:
        module (nn.Module): The module, run once on a random input.
        shape (Sequence[int]): Input shape ``(N, C, H, W)``.

    Returns:
        list[tuple[str, int]]: ``(name, parameter count)`` of each.
    """
    called = set()
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda m, _: called.add(id(m)))
    try:
        module(torch.randn(*shape))
    finally:
        handle.remove()
    used = {id(p) for m in module.modules() if id(m) in called
            for p in m.parameters(recurse=False)}
    found: List[Tuple[str, int]] = []
    for name, sub in module.named_modules():
        params = list(sub.parameters())
        if params and not any(id(p) in used for p in params) and not any(
                name.startswith(f'{n}.') for n, _ in found):
            found.append((name, sum(p.numel() for p in params)))
    return found


def measure_complexity(model: nn.Module,
                       shape: Sequence[int]) -> Dict[str, BenchmarkRow]:
    """Params and FLOPs of the backbone and of the whole model.

    The whole model is its tensor forward (backbone, neck, head; no
    preprocessing or post-processing, see
    :class:`~mmfalcon.deployment.TensorForward`). FLOPs follow mmengine's
    ``FlopAnalyzer`` (one multiply-add counts as one FLOP). Params count
    what the tensor forward uses; parameters of submodules it never calls
    (a segmentor's auxiliary head) are left out and named in ``note``.
    The fused rows measure a fused copy; ``model`` itself is left as it is.

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
                 fused=fuse_model(copy.deepcopy(model)).eval())
    rows: Dict[str, BenchmarkRow] = OrderedDict()
    for part in ('backbone', 'model'):
        for form, net in forms.items():
            module = net.backbone if part == 'backbone' else TensorForward(
                net)
            unused = unused_submodules(module, shape)
            row = BenchmarkRow(
                f'{part} {form}',
                params=count_params(module) - sum(n for _, n in unused),
                flops=count_flops(module, shape),
                note=', '.join(f'{name} ({n / 1e6:.3f}M params) unused'
                               for name, n in unused))
            if form == 'fused':
                ref = rows[f'{part} unfused']
                row.ratios = {
                    RATIO_COLUMNS[0]: row.params / ref.params,
                    RATIO_COLUMNS[1]: row.flops / ref.flops
                }
            rows[row.name] = row
    return rows
