"""Static INT8 quantization of an exported model with ONNX Runtime, its
evaluation with the model's own post-processing and its per-layer error.

The calibration and evaluation images come from the model config's own
test dataloader (its pipeline and the model's data preprocessor), so the
quantized graph sees exactly what the exported one was built for.
``onnxruntime`` is optional, imported only here, when used.
"""
import copy
import os.path as osp
import tempfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .onnx import _require

CALIBRATION_METHODS = ('minmax', 'entropy', 'percentile')


def eval_loader(model: nn.Module):
    """The config's test dataloader, one image per batch, in this
    process, in order (the export has batch size 1)."""
    from mmengine.runner import Runner
    cfg = copy.deepcopy(model.cfg.test_dataloader)
    cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    return Runner.build_dataloader(cfg)


@torch.no_grad()
def preprocessed(model: nn.Module, loader,
                 limit: Optional[int] = None) -> Iterator[Tuple[torch.Tensor,
                                                               list]]:
    """``(inputs, data_samples)`` of each batch after the model's data
    preprocessor (normalized, padded as in testing); at most ``limit``."""
    for i, data in enumerate(loader):
        if limit is not None and i >= limit:
            return
        data = model.data_preprocessor(data, False)
        yield data['inputs'], data['data_samples']


def calibration_inputs(model: nn.Module, shape: Sequence[int],
                       num: int) -> List[np.ndarray]:
    """``num`` preprocessed test images at the export ``shape``.

    An image of another size is resized (bilinear) to ``shape``:
    calibration only needs representative value ranges, not the exact
    geometry.
    """
    if num < 1:
        raise ValueError(f'the number of calibration images must be >= 1, '
                         f'got {num}')
    batches = []
    for inputs, _ in preprocessed(model, eval_loader(model), num):
        if tuple(inputs.shape[-2:]) != tuple(shape[-2:]):
            inputs = F.interpolate(inputs, size=tuple(shape[-2:]),
                                   mode='bilinear', align_corners=False)
        batches.append(inputs.float().numpy())
    if not batches:
        raise ValueError('the test dataloader gave no images to calibrate '
                         'on')
    return batches


def _reader(inputs: Sequence[np.ndarray], name: str):
    """An onnxruntime ``CalibrationDataReader`` over ``inputs``."""
    quantization = _require('onnxruntime.quantization')

    class Reader(quantization.CalibrationDataReader):

        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {name: x}

        def rewind(self):
            self.items = iter(inputs)

    return Reader()


def _input_name(path: str) -> str:
    onnx = _require('onnx')
    graph = onnx.load(path).graph
    init = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in init]
    if len(names) != 1:
        raise ValueError(f'{path} has inputs {names}; expected one image '
                         f'tensor')
    return names[0]


def quantize_onnx(fp32_path: str, out_path: str,
                  calibration: Sequence[np.ndarray],
                  method: str = 'minmax', per_channel: bool = True,
                  exclude: Sequence[str] = ()) -> None:
    """Static INT8 quantization (QDQ format) of an exported model.

    Args:
        fp32_path (str): The float ``.onnx`` file (from
            :func:`~mmfalcon.deployment.export_onnx`).
        out_path (str): The INT8 ``.onnx`` file to write.
        calibration (Sequence[np.ndarray]): Calibration inputs of the
            exported shape (:func:`calibration_inputs`).
        method (str): Activation range calibration, one of
            ``CALIBRATION_METHODS``. Defaults to ``'minmax'``.
        per_channel (bool): One weight scale per output channel (a fused
            re-parameterized kernel's channels differ widely in range).
            Defaults to True.
        exclude (Sequence[str]): ONNX node names left in float.
    """
    quantization = _require('onnxruntime.quantization')
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'calibration method {method!r}; expected one of '
                         f'{CALIBRATION_METHODS}')
    methods = dict(minmax=quantization.CalibrationMethod.MinMax,
                   entropy=quantization.CalibrationMethod.Entropy,
                   percentile=quantization.CalibrationMethod.Percentile)
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference only: the graph optimizer would rename tensors,
        # and layer_errors() matches them with the exported float model's.
        prepared = osp.join(tmp, 'prepared.onnx')
        quantization.quant_pre_process(fp32_path, prepared,
                                       skip_optimization=True)
        quantization.quantize_static(
            prepared, out_path,
            _reader(calibration, _input_name(fp32_path)),
            # uint8 activations, int8 weights: onnxruntime's x86 CPU
            # kernels (U8S8)
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_exclude=list(exclude),
            calibrate_method=methods[method])


def predict_from_outputs(model: nn.Module, outputs: Sequence[torch.Tensor],
                         data_samples: list) -> list:
    """The model's own post-processing on the outputs of its tensor
    forward (:class:`~mmfalcon.deployment.TensorForward` order), e.g. those
    of an ONNX Runtime session: a detector's head ``predict_by_feat``
    (boxes rescaled to the original image), a segmentor's
    ``predict_by_feat`` + ``postprocess_result``."""
    metas = [sample.metainfo for sample in data_samples]
    outputs = list(outputs)
    if hasattr(model, 'bbox_head'):
        levels = len(outputs) // 2
        results = model.bbox_head.predict_by_feat(
            outputs[:levels], outputs[levels:], batch_img_metas=metas,
            rescale=True)
        return model.add_pred_to_datasample(data_samples, results)
    if hasattr(model, 'decode_head'):
        mode = model.test_cfg.get('mode', 'whole')
        if mode != 'whole':
            raise ValueError(f"test_cfg.mode={mode!r}: the exported graph "
                             f"is the 'whole' image inference only")
        logits = model.decode_head.predict_by_feat(outputs[0], metas)
        return model.postprocess_result(logits, data_samples)
    raise TypeError(f'{type(model).__name__} has neither a bbox_head nor '
                    f'a decode_head; expected an mmdet detector or an '
                    f'mmseg segmentor')


@torch.no_grad()
def evaluate(model: nn.Module, runtime: nn.Module, shape: Sequence[int],
             limit: Optional[int] = None) -> Dict[str, float]:
    """Metrics of ``runtime`` (e.g. an
    :class:`~mmfalcon.deployment.OnnxRuntimeModule`) on the config's test
    set with its ``test_evaluator``, post-processed by ``model``.

    Args:
        model (nn.Module): The detector / segmentor that was exported
            (its config, preprocessor, head post-processing).
        runtime (nn.Module): Maps a preprocessed image batch to the
            tensor forward's outputs.
        shape (Sequence[int]): The exported input shape; every test image
            must preprocess to it (no resizing here, which would move the
            boxes / masks).
        limit (int, optional): Evaluate the first ``limit`` images only.
    """
    from mmengine.evaluator import Evaluator
    loader = eval_loader(model)
    evaluator = Evaluator(copy.deepcopy(model.cfg.test_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    count = 0
    for inputs, samples in preprocessed(model, loader, limit):
        if tuple(inputs.shape) != tuple(shape):
            raise ValueError(
                f'{samples[0].metainfo.get("img_path")} preprocesses to '
                f'{tuple(inputs.shape)}, the exported graph takes '
                f'{tuple(shape)}; export at that shape')
        evaluator.process(predict_from_outputs(model, runtime(inputs),
                                               samples))
        count += 1
    return evaluator.evaluate(count)


def _sqnr(signal: Sequence[np.ndarray], noisy: Sequence[np.ndarray]) -> float:
    """20 log10(|signal| / |signal - noisy|) in dB over all arrays; inf
    where they are equal (an all-zero tensor stays exact)."""
    signal = np.concatenate([np.ravel(a) for a in signal]).astype(np.float64)
    noise = signal - np.concatenate([np.ravel(a) for a in noisy])
    noise_norm = np.linalg.norm(noise)
    if noise_norm == 0:
        return float('inf')
    return float(20 * np.log10(np.linalg.norm(signal) / noise_norm))


def layer_errors(fp32_path: str, int8_path: str,
                 inputs: Sequence[np.ndarray]) -> List[tuple]:
    """Where INT8 loses accuracy, node by node.

    Runs both models on ``inputs`` and measures, for every tensor the
    INT8 (QDQ) model quantizes, its signal-to-quantization-noise ratio
    against the float model's tensor: 20 log10(|float| / |float - int8|),
    in dB, higher is better, all upstream error included. A node's loss is
    how far it lowers that ratio below its worst measured input's: its own
    weight and output quantization. Exact tensors have an infinite ratio.

    Args:
        fp32_path (str): The float model that was quantized.
        int8_path (str): Its QDQ model (:func:`quantize_onnx`).
        inputs (Sequence[np.ndarray]): Inputs to compare on.

    Returns:
        list[tuple]: ``(node name, op type, output SQNR dB, loss dB)`` per
        measured node output, in graph order.
    """
    onnx = _require('onnx')
    debug = _require('onnxruntime.quantization.qdq_loss_debug')
    name = _input_name(fp32_path)
    activations = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, path in (('float', fp32_path), ('qdq', int8_path)):
            augmented = osp.join(tmp, f'{kind}.onnx')
            debug.modify_model_output_intermediate_tensors(path, augmented)
            activations[kind] = debug.collect_activations(
                augmented, _reader(inputs, name))
    # Each quantized tensor after its quantize-dequantize pair against the
    # float model's; not the QDQ model's own before / after pairs, which
    # are off where the quantizer folded a ReLU or Clip into the preceding
    # node's output range.
    matched = debug.create_activation_matching(activations['qdq'],
                                               activations['float'])
    sqnr = {tensor: _sqnr(match['float'], match['post_qdq'])
            for tensor, match in matched.items() if 'float' in match}
    rows = []
    for node in onnx.load(fp32_path).graph.node:
        before = [sqnr[i] for i in node.input if i in sqnr]
        for out in node.output:
            if out in sqnr:
                loss = (min(before) if before else float('inf')) - sqnr[out]
                rows.append((node.name, node.op_type, sqnr[out],
                             max(loss, 0.0) if before else 0.0))
    return rows
