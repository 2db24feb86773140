from .onnx import DEFAULT_OPSET, check_onnx, export_onnx
from .wrapper import DEFAULT_INPUT_SIZE, TensorForward, input_size_from_config

__all__ = [
    'TensorForward', 'input_size_from_config', 'DEFAULT_INPUT_SIZE',
    'export_onnx', 'check_onnx', 'DEFAULT_OPSET'
]
