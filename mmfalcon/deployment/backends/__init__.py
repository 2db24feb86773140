"""Deploy runtimes behind one interface (:class:`Backend`): export a fused
model for one input shape and precision, load the files it wrote, run them
on numpy inputs (:class:`~mmfalcon.deployment.runtime.RuntimeModule`).

``tools/deployment/export.py`` goes through it; so can a benchmark. Each
runtime's packages are optional extras, imported only when its backend is
used.
"""
from typing import Dict, List, Optional, Sequence, Type

import numpy as np
import torch
import torch.nn as nn

from ..onnx import _example
from ..quantize import calibration_inputs
from ..runtime import RuntimeModule, relative_error
from ..wrapper import TensorForward
from .base import (PRECISIONS, Backend, BackendNotInstalledError,
                   UnsupportedOpError)
from .ncnn import NcnnBackend
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVINOBackend

BACKENDS: Dict[str, Type[Backend]] = {
    cls.name: cls
    for cls in (OnnxRuntimeBackend, OpenVINOBackend, NcnnBackend)
}


def get_backend(name: str, threads: Optional[int] = None,
                sfconv_form: Optional[str] = None,
                parc_form: Optional[str] = None) -> Backend:
    """The backend called ``name`` (a key of :data:`BACKENDS`).

    Args:
        name (str): ``'onnxruntime'``, ``'openvino'`` or ``'ncnn'``.
        threads (int, optional): Threads its loaded models run on;
            defaults to ``torch.get_num_threads()``.
        sfconv_form (str, optional): An SF-Conv export form other than the
            runtime's own (:attr:`Backend.sfconv_form`). Defaults to None.
        parc_form (str, optional): A ParC export form other than the
            runtime's own (:attr:`Backend.parc_form`). Defaults to None.
    """
    if name not in BACKENDS:
        raise ValueError(f'unknown backend {name!r}; expected one of '
                         f'{tuple(BACKENDS)}')
    return BACKENDS[name](threads, sfconv_form, parc_form)


@torch.no_grad()
def check_runtime(model: nn.Module, runtime: RuntimeModule,
                  shape: Sequence[int], seed: int = 1) -> float:
    """The relative error of ``runtime`` against the PyTorch ``model`` on a
    random input (:func:`~mmfalcon.deployment.runtime.relative_error`).

    Args:
        model (nn.Module): The fused model that was exported.
        runtime (RuntimeModule): Its export, loaded.
        shape (Sequence[int]): The exported input shape.
        seed (int): Seed of the input (not the export's example input, so
            a value baked into the graph would show). Defaults to 1.
    """
    x = _example(shape, seed)
    return relative_error(TensorForward(model.eval())(x),
                          runtime.run(x.numpy()),
                          getattr(runtime, 'path', type(runtime).__name__))


def export_and_check(model: nn.Module, backend: Backend, out: str,
                     shape: Sequence[int], precision: str = 'fp32',
                     calib_images: int = 32) -> Dict[str, object]:
    """Export ``model`` with ``backend``, load the files in its runtime and
    compare them with the PyTorch model (:func:`check_runtime`).

    Args:
        model (nn.Module): The fused detector / segmentor (not changed).
        backend (Backend): The runtime (:func:`get_backend`).
        out (str): Output prefix or model file (:meth:`Backend.files`).
        shape (Sequence[int]): Input shape ``(N, C, H, W)``, checked first
            (:func:`~mmfalcon.deployment.input_shape.check_input_shape`).
        precision (str): One of the backend's precisions. Defaults to
            ``'fp32'``.
        calib_images (int): Test images INT8 calibrates on (the config's
            test dataloader, :func:`~mmfalcon.deployment.
            calibration_inputs`). Defaults to 32.

    Returns:
        dict: ``files`` (written), ``runtime`` (loaded), ``error``
        (relative, the worst over outputs) and ``calibrated`` (the number
        of calibration images, 0 for float precisions).
    """
    from ..input_shape import check_input_shape
    backend.require(precision)
    check_input_shape(model, shape)
    calibration: List[np.ndarray] = []
    if precision == 'int8':
        calibration = calibration_inputs(model, shape, calib_images)
    files = backend.export(model, shape, out, precision, calibration)
    runtime = backend.load(out, precision)
    return dict(files=files, runtime=runtime,
                error=check_runtime(model, runtime, shape),
                calibrated=len(calibration))


__all__ = [
    'BACKENDS', 'PRECISIONS', 'Backend', 'BackendNotInstalledError',
    'UnsupportedOpError', 'OnnxRuntimeBackend', 'OpenVINOBackend',
    'NcnnBackend', 'get_backend', 'check_runtime', 'export_and_check'
]
