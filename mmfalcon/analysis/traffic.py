"""Bytes an inference moves, layer by layer, and the memory bandwidth that
bounds them.

A deploy runtime runs a lightweight model one layer after another: each
layer reads its input tensors and weights and writes its output. On a CPU
these models are bound by that traffic, not by multiply-adds, so a model
with a third of the multiply-adds but as many bytes per inference runs
about as fast. :func:`onnx_traffic` counts the bytes of an ONNX graph the
way the runtimes execute it: activations are fused into the layer before
them (ONNX Runtime, OpenVINO and ncnn all fuse ReLU, Clip, HardSigmoid
and friends into convs) and shape-only ops move nothing.
"""
import time
from typing import Dict

import numpy as np

# Ops the runtimes fuse into the layer before them: no traffic of their own.
FUSED_ACTIVATIONS = frozenset({
    'Relu', 'Clip', 'LeakyRelu', 'Sigmoid', 'HardSigmoid', 'HardSwish',
    'Tanh', 'Elu', 'Selu', 'Softplus', 'Gelu', 'Mish'
})
# Ops that only relabel a tensor's shape (a view, no copy).
SHAPE_OPS = frozenset({
    'Reshape', 'Flatten', 'Squeeze', 'Unsqueeze', 'Identity', 'Shape',
    'Constant', 'ConstantOfShape'
})

_NO_TRAFFIC = FUSED_ACTIVATIONS | SHAPE_OPS


def _tensor_bytes(value_info) -> int:
    """Bytes of a typed, fully shaped ONNX value; 0 when its shape is not
    static."""
    from onnx import helper
    tensor_type = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField('dim_value') else 0
            for d in tensor_type.shape.dim]
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(
        tensor_type.elem_type)).itemsize
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def onnx_traffic(path: str) -> Dict[str, int]:
    """Bytes one inference of an ONNX file (static input shape) reads and
    writes, layer by layer: each layer's input tensors, weights and output
    tensors, except the layers of :data:`FUSED_ACTIVATIONS` (fused into the
    layer before) and :data:`SHAPE_OPS` (views).

    Args:
        path (str): The ``.onnx`` file.

    Returns:
        dict: ``activations`` (bytes of layer inputs and outputs),
        ``weights`` (bytes of the initializers layers read), ``total``
        and ``by_op`` (op type -> its layers' bytes, largest first).
    """
    import onnx
    from onnx import numpy_helper
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    sizes = {v.name: _tensor_bytes(v) for v in (
        list(graph.input) + list(graph.value_info) + list(graph.output))}
    weights = {init.name: numpy_helper.to_array(init).nbytes
               for init in graph.initializer}
    activations = weight_bytes = 0
    by_op: Dict[str, int] = {}
    for node in graph.node:
        if node.op_type in _NO_TRAFFIC:
            continue
        moved = sum(sizes.get(name, 0) for name in node.output)
        activations += moved
        for name in node.input:
            if name in weights:
                weight_bytes += weights[name]
                moved += weights[name]
            else:
                activations += sizes.get(name, 0)
                moved += sizes.get(name, 0)
        by_op[node.op_type] = by_op.get(node.op_type, 0) + moved
    return dict(activations=activations, weights=weight_bytes,
                total=activations + weight_bytes,
                by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])))


def memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """The machine's memory copy bandwidth in GB/s (bytes read plus bytes
    written per second, best of ``repeats`` copies of an array too large
    for the caches).

    Args:
        megabytes (int): Size of the array copied. Defaults to 256.
        repeats (int): Copies timed; the fastest counts. Defaults to 5.
    """
    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9
