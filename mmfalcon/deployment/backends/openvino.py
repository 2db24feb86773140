"""OpenVINO: the project's ONNX file converted by ``openvino.convert_model``;
INT8 by NNCF post-training quantization."""
from typing import List, Optional, Sequence

import numpy as np

from ..runtime import RuntimeModule
from .base import Backend, ops_in_message, unsupported_ops

# The CPU plugin's INFERENCE_PRECISION_HINT per precision. Unset, it is
# bf16 on a CPU with BF16 support (AVX512_BF16, AMX), which errs by about
# 1e-2 of the output scale, so fp32 sets f32. INT8 runs its remaining
# float ops in f32 as well.
INFERENCE_PRECISION = dict(fp32='f32', fp16='f16', bf16='bf16', int8='f32')


class OpenVINOBackend(Backend):
    """OpenVINO's CPU plugin; writes ``OUT.xml`` + ``OUT.bin``.

    The model is converted from the project's ONNX file rather than from
    the PyTorch module: on the demo models it is exact either way (within
    1.2e-6 of the output scale in f32), and converted from ONNX it ran
    1.3-2.0x faster (docs/deployment.md).

    * fp32: float32 weights (``save_model(compress_to_fp16=False)``,
      whose default would store float16), compiled with
      ``INFERENCE_PRECISION_HINT='f32'``.
    * fp16: float16 weights, compiled in f16.
    * bf16: float32 weights, compiled in bf16.
    * int8: ``nncf.quantize`` on the calibration images (the config's own
      test data), compiled in f32, with what INT8 would slow down kept in
      float: the residual Adds (in float the CPU plugin fuses each into
      the conv before it; quantized, it runs as a kernel of its own) and
      the narrow convs of :func:`narrow_convs`.

    A model's precision is a compile setting, not part of the file: load
    it with the precision it was exported in (:meth:`load`).
    """
    name = 'openvino'
    extra = 'openvino'
    packages = dict(onnx='onnx', openvino='openvino')
    int8_packages = dict(nncf='nncf')
    precisions = ('fp32', 'fp16', 'bf16', 'int8')
    suffixes = ('.xml', '.bin')

    def convert(self, onnx_path: str, paths: List[str], shape: Sequence[int],
                precision: str,
                calibration: Optional[Sequence[np.ndarray]]) -> None:
        import openvino as ov
        try:
            model = ov.convert_model(onnx_path)
        except Exception as exc:  # OpConversionFailure, a pybind type
            ops = ops_in_message(str(exc), [
                r'No conversion rule found for operations: ([^\n]+)',
                r'-- (\S+) with a message'
            ])
            if not ops:
                raise
            raise unsupported_ops(self.name, onnx_path, ops,
                                  str(exc)) from exc
        if precision == 'int8':
            import nncf
            model = nncf.quantize(
                model, nncf.Dataset(list(calibration)),
                subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(
                    names=narrow_convs(model), types=['Add'],
                    validate=False))
        ov.save_model(model, paths[0], compress_to_fp16=precision == 'fp16')

    def load(self, out: str, precision: str = 'fp32') -> 'OpenVINOModule':
        self.require(precision)
        return OpenVINOModule(self.files(out)[0], precision, self.threads)


# A conv with fewer input channels per group than this, other than a
# depthwise one, stays float in INT8 (:func:`narrow_convs`).
MIN_INT8_GROUP_CHANNELS = 8


def narrow_convs(model) -> List[str]:
    """The names of the convs of an OpenVINO model that INT8 would slow
    down: fewer than :data:`MIN_INT8_GROUP_CHANNELS` input channels per
    group and not depthwise (one input and one output channel per group).
    These are a stem conv on the 3 image channels and FalconNet's grouped
    2x2 patch merges (1 input, 2 output channels per group): the CPU
    plugin's INT8 kernels (AMX, VNNI) work on blocks of input channels, and
    these ran 1.6-3x slower in INT8 than in f32 (docs/deployment.md)."""
    names = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ('Convolution', 'GroupConvolution'):
            continue
        weight = op.input(1).get_partial_shape().to_shape()
        # Convolution [O, I, kh, kw]; GroupConvolution [G, O/G, I/G, kh, kw]
        out_per_group, in_per_group = weight[:2] if kind == 'Convolution' \
            else weight[1:3]
        depthwise = kind == 'GroupConvolution' and in_per_group == 1 and (
            out_per_group == 1)
        if in_per_group < MIN_INT8_GROUP_CHANNELS and not depthwise:
            names.append(op.get_friendly_name())
    return names


class OpenVINOModule(RuntimeModule):
    """An OpenVINO IR compiled for the CPU with an explicit precision.

    Args:
        path (str): The ``.xml`` file (its ``.bin`` beside it).
        precision (str): A key of :data:`INFERENCE_PRECISION`.
        threads (int, optional): Inference threads; defaults to
            ``torch.get_num_threads()``.
    """

    def __init__(self, path: str, precision: str = 'fp32',
                 threads: Optional[int] = None):
        super().__init__()
        import openvino as ov
        import torch
        if precision not in INFERENCE_PRECISION:
            raise ValueError(f'precision {precision!r}; expected one of '
                             f'{tuple(INFERENCE_PRECISION)}')
        self.path = path
        self.compiled = ov.Core().compile_model(
            path, 'CPU', {
                'INFERENCE_PRECISION_HINT': INFERENCE_PRECISION[precision],
                'INFERENCE_NUM_THREADS': threads or torch.get_num_threads(),
                'PERFORMANCE_HINT': 'LATENCY'
            })
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        self.request.infer([x])
        # the request reuses its output buffers on the next call
        return [self.request.get_output_tensor(i).data.copy()
                for i in range(len(self.compiled.outputs))]
