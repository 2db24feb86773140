"""A model loaded in a deploy runtime, and how far its outputs are from
the PyTorch model's.

Every runtime (ONNX Runtime, OpenVINO, ncnn) is wrapped as a
:class:`RuntimeModule`: numpy in, numpy out (:meth:`RuntimeModule.run`),
and called like the module it was exported from (one tensor in, a tuple of
tensors out), so latency measurement and evaluation with the model's own
post-processing take every runtime unchanged.
"""
from typing import List, Sequence

import numpy as np
import torch
import torch.nn as nn


class RuntimeModule(nn.Module):
    """Base of a model file loaded in a runtime: subclasses implement
    :meth:`run`."""

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        """The outputs for one float32 input array, in the exported
        graph's order (:class:`~mmfalcon.deployment.TensorForward`'s)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple:
        outputs = self.run(np.ascontiguousarray(x.detach().cpu().numpy()))
        return tuple(torch.from_numpy(out) for out in outputs)


def relative_error(expected: Sequence[torch.Tensor],
                   actual: Sequence[np.ndarray], source: str) -> float:
    """The largest error over all outputs, each output's largest absolute
    difference divided by its scale (its largest absolute PyTorch value):
    float32 rounding grows with the values, so an absolute bound fails
    large outputs that are correct. An all-zero output is compared
    absolutely.

    Args:
        expected (Sequence[torch.Tensor]): The PyTorch outputs.
        actual (Sequence[np.ndarray]): The runtime's outputs, same order.
        source (str): What gave ``actual`` (a file, a runtime), for the
            error when the outputs' number or shapes differ.
    """
    if len(actual) != len(expected):
        raise RuntimeError(f'{source} has {len(actual)} outputs, PyTorch '
                           f'{len(expected)}')
    err = 0.0
    for ours, theirs in zip(expected, actual):
        if tuple(ours.shape) != tuple(theirs.shape):
            raise RuntimeError(f'output shape {tuple(theirs.shape)} in '
                               f'{source}, {tuple(ours.shape)} in PyTorch')
        ours = ours.detach().numpy().astype(np.float64)
        scale = float(np.abs(ours).max(initial=0.0)) or 1.0
        err = max(err, float(np.abs(ours - theirs).max(initial=0.0)) / scale)
    return err
