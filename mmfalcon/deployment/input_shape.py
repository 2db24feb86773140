"""Whether a model can take an input shape, checked before exporting.

Two constraints, each named with the shape when it fails:

* the data preprocessor's padding divisor (mmdet ``pad_size_divisor``,
  mmseg ``size_divisor``): in testing the model only sees multiples of it;
* one PyTorch forward at the shape, watched layer by layer: a strided conv
  or pooling layer whose windows tile its input must get at least one
  window and must read every pixel (a 2x2 stride-2 patch merge given an
  odd size drops the last row); any other layer that fails is named with
  the size it got.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .onnx import _example
from .wrapper import TensorForward

_WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


class InputShapeError(ValueError):
    """A shape the model cannot take; the message names the shape, the
    layer and the constraint."""


def _pairs(value) -> Tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, ) * 2


def _window(module: nn.Module):
    """``(kernel, stride, padding, dilation)`` per spatial axis (H, W) of a
    conv / pooling layer; None for ``padding='same'`` (stride 1) or a
    pooling layer that rounds up (``ceil_mode``: it reads every pixel)."""
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, str):
        return None
    if getattr(module, 'ceil_mode', False):
        return None
    dilation = getattr(module, 'dilation', 1)
    stride = module.stride if module.stride is not None else \
        module.kernel_size
    return tuple(zip(_pairs(module.kernel_size), _pairs(stride),
                     _pairs(module.padding), _pairs(dilation)))


def _divisor(model: nn.Module) -> Tuple[Optional[str], int]:
    preprocessor = getattr(model, 'data_preprocessor', None)
    for key in ('pad_size_divisor', 'size_divisor'):
        value = getattr(preprocessor, key, None)
        if isinstance(value, int) and value > 1:
            return key, value
    return None, 1


class _Watch:
    """Forward hooks on every module: the stack of modules running, and
    the first windowed layer whose input breaks a constraint.

    Args:
        model (nn.Module): The model to watch (hooks until :meth:`remove`).
        size (Tuple[int, int]): The model's input ``(H, W)``.
    """

    def __init__(self, model: nn.Module, size: Tuple[int, int]):
        self.size = size
        self.stack: List[Tuple[str, nn.Module, tuple]] = []
        self.problem: Optional[str] = None
        # per axis: the largest stride so far times stride of a layer that
        # tiles its input
        self.divisor = [1.0, 1.0]
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: self.enter(name, m, args)))
            self.handles.append(module.register_forward_hook(self.leave))

    def enter(self, name: str, module: nn.Module, args: tuple):
        shape = tuple(args[0].shape) if args and isinstance(
            args[0], torch.Tensor) else ()
        self.stack.append((name, module, shape))
        window = _window(module) if isinstance(module, _WINDOWED) else None
        if window is None or len(shape) != 4:
            return
        for axis, (size, (k, s, p, d)) in enumerate(zip(shape[2:], window)):
            extent = d * (k - 1) + 1
            if size + 2 * p < extent:
                self.report(name, module, shape,
                            f'needs at least {extent - 2 * p} pixels per '
                            f'axis (kernel {k}, dilation {d}, padding {p})')
                continue
            if s < 2 or extent < s or p >= s - 1:
                continue  # reads every pixel of any size, or skips by design
            # a tiling layer's input must be a multiple of its stride, and
            # the input image a multiple of that times the stride so far
            self.divisor[axis] = max(self.divisor[axis],
                                     self.size[axis] / size * s)
            unread = (size + 2 * p - extent) % s - p
            if unread > 0:
                self.report(
                    name, module, shape,
                    f'reads {unread} of its last '
                    f'{"rows" if axis == 0 else "columns"} not at all '
                    f'(kernel {k}, stride {s}, padding {p})')

    def leave(self, module: nn.Module, args: tuple, output) -> None:
        self.stack.pop()  # returns None: the output stays as it is

    def report(self, name: str, module: nn.Module, shape: tuple,
               constraint: str):
        if self.problem is None:
            self.problem = (f'{name or "the model"} '
                            f'({type(module).__name__}) gets a '
                            f'{shape[2]}x{shape[3]} input and {constraint}')

    def remove(self):
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def _watched_forward(model: nn.Module, shape: Tuple[int, ...]) -> _Watch:
    """One forward at ``shape`` under a :class:`_Watch`; a layer that fails
    ends it with an :class:`InputShapeError`."""
    watch = _Watch(model, shape[2:])
    try:
        TensorForward(model).eval()(_example(shape))
    except Exception as exc:
        if watch.problem is not None:  # a window larger than its input
            raise InputShapeError(
                f'input shape {shape}: {watch.problem}') from exc
        name, module, got = watch.stack[-1] if watch.stack else ('', model,
                                                                  shape)
        raise InputShapeError(
            f'input shape {shape}: the model cannot take it: '
            f'{name or "the model"} ({type(module).__name__}) failed on an '
            f'input of shape {got}: {exc}') from exc
    finally:
        watch.remove()
    return watch


def _takes(model: nn.Module, shape: Tuple[int, ...]) -> bool:
    try:
        return _watched_forward(model, shape).problem is None
    except InputShapeError:
        return False


def _power_of_two(value: float) -> int:
    return 2**max(0, round(math.log2(value)))


def check_input_shape(model: nn.Module, shape: Sequence[int]) -> None:
    """Raise :class:`InputShapeError` unless ``model`` takes ``shape``.

    Where a strided layer would leave pixels unread, the message suggests
    the nearest shapes the model takes whole (each checked the same way):
    multiples of the largest stride at which such a layer runs.

    Args:
        model (nn.Module): The (fused) detector / segmentor to export, in
            eval mode.
        shape (Sequence[int]): ``(N, C, H, W)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) <= 0:
        raise InputShapeError(f'input shape {shape}: expected (N, C, H, W) '
                              f'with positive sizes')
    key, divisor = _divisor(model)
    if shape[2] % divisor or shape[3] % divisor:
        raise InputShapeError(
            f'input shape {shape}: the data preprocessor pads test images '
            f'to multiples of {divisor} ({key}={divisor}); export H and W '
            f'that are multiples of {divisor}')
    watch = _watched_forward(model, shape)
    if watch.problem is None:
        return
    # The strides so far are measured on floored sizes here; the models'
    # strides are powers of two.
    steps = [_power_of_two(d) for d in watch.divisor]
    nearest = []
    for rounding in (math.floor, math.ceil):
        sizes = tuple(max(step, step * rounding(size / step))
                      for size, step in zip(shape[2:], steps))
        candidate = shape[:2] + sizes
        if candidate not in nearest and _takes(model, candidate):
            nearest.append(candidate)
    hint = ' or '.join(f'{s[2]}x{s[3]}' for s in nearest)
    raise InputShapeError(
        f'input shape {shape}: {watch.problem}' +
        (f'; the nearest sizes it takes whole: {hint}' if hint else ''))
