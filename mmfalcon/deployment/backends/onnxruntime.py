"""ONNX Runtime: the project's ONNX export itself (fp32), or its static
INT8 quantization (:func:`~mmfalcon.deployment.quantize_onnx`)."""
import shutil
from typing import List, Optional, Sequence

import numpy as np

from ..onnx import OnnxRuntimeModule
from ..quantize import quantize_onnx
from .base import Backend, ops_in_message, unsupported_ops


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime's CPU provider; writes ``OUT.onnx``.

    INT8 is onnxruntime's static QDQ quantization (uint8 activations,
    int8 per-channel weights, min-max calibration). A loaded model runs
    with thread spinning off (``session.intra_op.allow_spinning=0``):
    otherwise the idle threads of one session slow the next one of an
    interleaved benchmark down.
    """
    name = 'onnxruntime'
    extra = 'deploy'
    packages = dict(onnx='onnx', onnxruntime='onnxruntime')
    precisions = ('fp32', 'int8')
    suffixes = ('.onnx', )

    def convert(self, onnx_path: str, paths: List[str], shape: Sequence[int],
                precision: str,
                calibration: Optional[Sequence[np.ndarray]]) -> None:
        if precision == 'int8':
            quantize_onnx(onnx_path, paths[0], calibration)
        else:
            shutil.copyfile(onnx_path, paths[0])
        # A session is where ONNX Runtime first meets the ops.
        try:
            self.load(paths[0], precision)
        except Exception as exc:  # onnxruntime's own exception types
            ops = ops_in_message(str(exc), [
                r'(\S+)\(-?\d+\) is not a registered function/op',
                r'Could not find an implementation for (\S+)\('
            ])
            if not ops:
                raise
            # onnxruntime writes a custom op as domain:Op
            raise unsupported_ops(self.name, onnx_path,
                                  [op.replace(':', '.') for op in ops],
                                  str(exc)) from exc

    def load(self, out: str, precision: str = 'fp32') -> OnnxRuntimeModule:
        self.require(precision)
        return OnnxRuntimeModule(self.files(out)[0], self.threads,
                                 spinning=False)
