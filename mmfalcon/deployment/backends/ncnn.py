"""ncnn: the project's ONNX file converted by pnnx (the ``pnnx`` wheel's
binary), run by the ``ncnn`` wheel."""
import os.path as osp
import subprocess
import tempfile
from typing import List, Optional, Sequence

import numpy as np

from ..runtime import RuntimeModule
from .base import Backend, ops_in_message, unsupported_ops


class NcnnBackend(Backend):
    """ncnn on the CPU; writes ``OUT.param`` + ``OUT.bin``.

    * fp32: pnnx with ``fp16=0`` (its default stores float16 weights),
      loaded with ncnn's float16 and bfloat16 storage and arithmetic off
      (on by default; on an AVX512-FP16 CPU they err by about 3e-4 of the
      output scale).
    * fp16: float16 weights, ncnn's float16 storage and arithmetic on.

    Fused ParC blocks are exported in the ``'conv'`` form (circular
    padding and a depthwise conv per ParC): ncnn's batched MatMul ran the
    merged circulant products 1.33x slower at 320 (ParC-Net-S, 2 threads).

    INT8 is not offered: ncnn quantizes with its ``ncnn2table`` /
    ``ncnn2int8`` tools, which neither wheel ships. Batch size 1 only
    (ncnn's blobs have no batch axis).
    """
    name = 'ncnn'
    extra = 'ncnn'
    packages = dict(onnx='onnx', pnnx='pnnx', ncnn='ncnn')
    precisions = ('fp32', 'fp16')
    suffixes = ('.param', '.bin')
    parc_form = 'conv'

    def convert(self, onnx_path: str, paths: List[str], shape: Sequence[int],
                precision: str,
                calibration: Optional[Sequence[np.ndarray]]) -> None:
        import ncnn
        import pnnx
        if shape[0] != 1:
            raise ValueError(f'the ncnn backend exports batch size 1 only; '
                             f'got shape {tuple(shape)}')
        with tempfile.TemporaryDirectory() as tmp:
            # pnnx writes its own intermediate files too; they stay in tmp
            side = {key: osp.join(tmp, name) for key, name in (
                ('pnnxparam', 'model.pnnx.param'),
                ('pnnxbin', 'model.pnnx.bin'), ('pnnxpy', 'model_pnnx.py'),
                ('pnnxonnx', 'model.pnnx.onnx'), ('ncnnpy', 'model_ncnn.py'))}
            args = [pnnx.EXEC_PATH, onnx_path,
                    'inputshape=[' + ','.join(map(str, shape)) + ']',
                    f'fp16={int(precision == "fp16")}',
                    f'ncnnparam={paths[0]}', f'ncnnbin={paths[1]}'] + [
                        f'{key}={path}' for key, path in side.items()]
            done = subprocess.run(args, cwd=tmp, capture_output=True,
                                  text=True)
        log = done.stdout + done.stderr
        # pnnx names an op it cannot take ('todo Op', 'unexpected op_type
        # Op') and passes it on under its ONNX name, or stops (even with a
        # segmentation fault); ncnn then has no layer of that type.
        ops = ops_in_message(log, [r'unexpected op_type (\S+)',
                                   r'(?m)^todo (\S+)'])
        if done.returncode or not osp.isfile(paths[0]):
            if ops:
                raise unsupported_ops('pnnx', onnx_path, ops, log)
            raise RuntimeError(f'pnnx failed (exit status {done.returncode})'
                               f' converting the exported graph: '
                               f'{log.strip()[-1500:]}')
        unknown = [kind for kind in _layer_types(paths[0])
                   if ncnn.layer_to_index(kind) < 0]
        if unknown:
            raise unsupported_ops(
                'ncnn', onnx_path, unknown,
                f'pnnx passed the op on unconverted: ncnn has no layer type '
                f'{", ".join(unknown)}')

    def load(self, out: str, precision: str = 'fp32') -> 'NcnnModule':
        self.require(precision)
        return NcnnModule(*self.files(out), precision, self.threads)


def _layer_types(param_path: str) -> List[str]:
    """The distinct layer types of an ncnn ``.param`` file (after its magic
    number and counts line, one layer per line, its type first)."""
    with open(param_path) as f:
        lines = f.read().splitlines()[2:]
    return list(dict.fromkeys(line.split()[0] for line in lines
                              if line.strip()))


class NcnnModule(RuntimeModule):
    """An ncnn model run on the CPU at an explicit precision.

    pnnx names the input ``in0`` and the outputs ``out0, out1, ...`` in
    the exported graph's order.

    Args:
        param_path (str): The ``.param`` file.
        bin_path (str): The ``.bin`` file.
        precision (str): ``'fp32'`` (float16 / bfloat16 storage and
            arithmetic off) or ``'fp16'`` (float16 on).
        threads (int, optional): Threads; defaults to
            ``torch.get_num_threads()``.
    """

    def __init__(self, param_path: str, bin_path: str,
                 precision: str = 'fp32', threads: Optional[int] = None):
        super().__init__()
        import ncnn
        import torch
        if precision not in NcnnBackend.precisions:
            raise ValueError(f'precision {precision!r}; expected one of '
                             f'{NcnnBackend.precisions}')
        self.path = param_path
        net = ncnn.Net()
        half = precision == 'fp16'
        opt = net.opt
        opt.use_fp16_storage = opt.use_fp16_packed = half
        opt.use_fp16_arithmetic = half
        opt.use_bf16_storage = opt.use_bf16_packed = False
        opt.num_threads = threads or torch.get_num_threads()
        # idle OpenMP threads would spin 20 ms (ncnn's default), slowing
        # the next model of an interleaved benchmark down
        opt.openmp_blocktime = 0
        if net.load_param(param_path) or net.load_model(bin_path):
            raise RuntimeError(f'ncnn could not load {param_path} / '
                               f'{bin_path}')
        self.net = net
        with open(param_path) as f:
            blobs = set(f.read().split())
        self.outputs = []
        while f'out{len(self.outputs)}' in blobs:
            self.outputs.append(f'out{len(self.outputs)}')

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        import ncnn
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f'ncnn takes one image (1, C, H, W); got an '
                             f'input of shape {x.shape}')
        # ncnn.Mat wraps the array's memory: keep it alive until extracted
        image = np.ascontiguousarray(x[0], dtype=np.float32)
        extractor = self.net.create_extractor()
        extractor.input('in0', ncnn.Mat(image))
        outputs = []
        for name in self.outputs:
            ret, mat = extractor.extract(name)
            if ret:
                raise RuntimeError(f'ncnn failed extracting {name} of '
                                   f'{self.path} (status {ret})')
            outputs.append(np.array(mat)[None])  # the batch axis back
        return outputs
