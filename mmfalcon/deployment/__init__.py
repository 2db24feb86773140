from .onnx import (DEFAULT_OPSET, OnnxRuntimeModule, check_onnx,
                   export_module, export_onnx)
from .quantize import (CALIBRATION_METHODS, calibration_inputs, evaluate,
                       layer_errors, predict_from_outputs, quantize_onnx)
from .wrapper import DEFAULT_INPUT_SIZE, TensorForward, input_size_from_config

__all__ = [
    'TensorForward', 'input_size_from_config', 'DEFAULT_INPUT_SIZE',
    'export_onnx', 'export_module', 'check_onnx', 'DEFAULT_OPSET',
    'OnnxRuntimeModule', 'quantize_onnx', 'calibration_inputs', 'evaluate',
    'layer_errors', 'predict_from_outputs', 'CALIBRATION_METHODS'
]
