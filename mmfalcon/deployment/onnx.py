"""ONNX export of a fused detector / segmentor and its check in onnxruntime.

``onnx`` and ``onnxruntime`` are optional dependencies, imported only
here, when used. The export uses PyTorch's TorchScript-based exporter
(``dynamo=False``): the fused ParC layers cache their kernels per input
size, which that tracer records as constants of the fixed export size.
Convs with ``padding='same'`` (the dilated FalconNet) are exported with
explicit padding, which ONNX Runtime accepts for dilated convs, fused
SF-Conv pairs as block-aligned grouped convs or one dense conv, the forms
ONNX Runtime runs fastest (:mod:`mmfalcon.deployment.sfconv_form`), and
fused ParC blocks in the token mixer form asked for
(:mod:`mmfalcon.deployment.parc_form`); all on a copy of the model.
"""
import copy
import functools
import warnings
from importlib import import_module
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmfalcon.models.layers.parc import ParCBlock
from mmfalcon.models.layers.sfconv import FactorizedPointwise
from .parc_form import check_parc_form, parc_export_form
from .runtime import RuntimeModule, relative_error
from .sfconv_form import check_sfconv_form, sfconv_export_form
from .wrapper import TensorForward, _flatten

DEFAULT_OPSET = 17


def _require(module: str):
    try:
        return import_module(module)
    except ImportError as exc:
        raise ImportError(
            f'ONNX export needs the optional package {module!r}, which is '
            f'not installed ({exc}); install it with: pip install onnx '
            f'onnxruntime') from exc


def _check_shape(shape: Sequence[int]):
    if len(shape) != 4 or any(int(s) <= 0 for s in shape):
        raise ValueError(f'shape must be (N, C, H, W) with positive sizes, '
                         f'got {tuple(shape)}')


def _example(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


class _ExplicitPadConv2d(nn.Module):
    """A ``padding='same'`` conv as explicit zero padding + unpadded conv.

    PyTorch exports ``'same'`` as ``auto_pad=SAME_UPPER``, which ONNX
    Runtime rejects for dilated convs; explicit padding (the extra pixel of
    an odd total at the end, as PyTorch pads) runs everywhere. An even
    total is the conv's own symmetric padding, which saves ONNX Runtime a
    separate Pad copy of the input.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.pads = []  # F.pad order: last dim first
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
            total = d * (k - 1)
            self.pads += [total // 2, total - total // 2]
        self.symmetric = self.pads[0::2] == self.pads[1::2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if self.symmetric:  # conv padding order: first dim first
            return F.conv2d(x, conv.weight, conv.bias, conv.stride,
                            tuple(reversed(self.pads[0::2])), conv.dilation,
                            conv.groups)
        return F.conv2d(F.pad(x, self.pads), conv.weight, conv.bias,
                        conv.stride, 0, conv.dilation, conv.groups)


def _export_form(
        module: nn.Module,
        sfconv_form: str = 'auto',
        parc_form: str = 'merged'
) -> Optional[Callable[[nn.Module], nn.Module]]:
    """What builds the module that ``module`` is exported as, or None when
    it is exported as it is: a zero-padded ``padding='same'`` conv as
    explicit padding, a fused SF-Conv pair in the form ``sfconv_form``
    (:func:`~.sfconv_form.sfconv_export_form`), a ParC block in the token
    mixer form ``parc_form`` (:func:`~.parc_form.parc_export_form`; the
    block itself for ``'merged'``)."""
    if isinstance(module, nn.Conv2d) and module.padding == 'same' and (
            module.padding_mode == 'zeros'):
        return _ExplicitPadConv2d
    if isinstance(module, FactorizedPointwise):
        return functools.partial(sfconv_export_form, form=sfconv_form)
    if isinstance(module, ParCBlock) and parc_form != 'merged':
        return functools.partial(parc_export_form, form=parc_form)
    return None


def _for_export(model: nn.Module, sfconv_form: str = 'auto',
                parc_form: str = 'merged') -> nn.Module:
    """A copy of ``model`` with every module that has an export form
    (:func:`_export_form`) replaced by it; ``model`` itself when none has.
    The caller's model is never changed."""
    forms = dict(sfconv_form=sfconv_form, parc_form=parc_form)
    if all(_export_form(m, **forms) is None for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        form = _export_form(module, **forms)
        if form is not None and not name:  # the model itself
            return form(module)
        if form is not None:
            parent, _, attr = name.rpartition('.')
            setattr(model.get_submodule(parent), attr, form(module))
    return model


def export_module(module: nn.Module, shape: Sequence[int], path: str,
                  opset: int = DEFAULT_OPSET,
                  output_names: Optional[List[str]] = None,
                  sfconv_form: str = 'auto',
                  parc_form: str = 'merged') -> Dict[str, list]:
    """Export any module that maps one image tensor to a tensor or (nested)
    tuples of tensors, e.g. a bare backbone, for a fixed input shape.

    Args:
        module (nn.Module): The module; set to eval mode, otherwise
            unchanged (a copy is rewritten for export: fused SF-Conv
            pairs as :func:`~.sfconv_form.sfconv_export_form` picks,
            whatever their PyTorch ``impl``, fused ParC blocks in
            ``parc_form``).
        shape (Sequence[int]): Input shape ``(N, C, H, W)``.
        path (str): The ``.onnx`` file to write.
        opset (int): ONNX opset version. Defaults to 17.
        output_names (list[str], optional): One name per flattened output.
            Defaults to ``output0, output1, ...``.
        sfconv_form (str): The form of the fused SF-Conv pairs, one of
            :data:`~.sfconv_form.SFCONV_FORMS`. Defaults to ``'auto'``.
        parc_form (str): The token mixer form of the fused ParC blocks, one
            of :data:`~.parc_form.PARC_FORMS`. Defaults to ``'merged'``.

    Returns:
        dict: ``input_names`` and ``output_names`` of the exported graph.
    """
    onnx = _require('onnx')
    _check_shape(shape)
    check_sfconv_form(sfconv_form)
    check_parc_form(parc_form)
    module.eval()  # a copy made for export keeps the mode
    exported = _for_export(module, sfconv_form, parc_form)
    x = _example(shape)
    input_names = ['input']
    # This first run, in eval mode at the export shape, also makes the fused
    # ParC kernels for it (the merged mixers' circulants and bias maps, or
    # those of the ParC form), which the tracer below records as constants.
    with torch.no_grad():
        count = len(_flatten(exported(x)))
    if output_names is None:
        output_names = [f'output{i}' for i in range(count)]
    elif len(output_names) != count:
        raise ValueError(f'{len(output_names)} output names for {count} '
                         f'outputs: {output_names}')
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter is chosen on purpose (module doc)
        warnings.filterwarnings(
            'ignore', message='You are using the legacy TorchScript',
            category=DeprecationWarning)
        torch.onnx.export(
            exported, (x, ), path, dynamo=False,
            opset_version=opset, input_names=input_names,
            output_names=output_names, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(path))
    return dict(input_names=input_names, output_names=output_names)


def export_onnx(model: nn.Module, shape: Sequence[int], path: str,
                opset: int = DEFAULT_OPSET,
                sfconv_form: str = 'auto',
                parc_form: str = 'merged') -> Dict[str, list]:
    """Export the tensor forward of ``model`` for a fixed input shape.

    Args:
        model (nn.Module): A detector or segmentor (fused for deployment,
            see :func:`mmfalcon.apis.init_model`); set to eval mode,
            otherwise unchanged (a copy is rewritten for export).
        shape (Sequence[int]): Input shape ``(N, C, H, W)``, preprocessed
            (normalized) images.
        path (str): The ``.onnx`` file to write.
        opset (int): ONNX opset version. Defaults to 17.
        sfconv_form (str): The form of the fused SF-Conv pairs, one of
            :data:`~.sfconv_form.SFCONV_FORMS`. Defaults to ``'auto'``.
        parc_form (str): The token mixer form of the fused ParC blocks, one
            of :data:`~.parc_form.PARC_FORMS`. Defaults to ``'merged'``.

    Returns:
        dict: ``input_names`` and ``output_names`` of the exported graph
        (see :class:`~mmfalcon.deployment.TensorForward` for the names).
    """
    _require('onnx')  # a missing package first, before any model check
    _check_shape(shape)
    model.eval()
    wrapper = TensorForward(model).eval()
    return export_module(wrapper, shape, path, opset,
                         wrapper.output_names(_example(shape)), sfconv_form,
                         parc_form)


class OnnxRuntimeModule(RuntimeModule):
    """An ONNX file run by onnxruntime's CPU provider, called like the
    module it was exported from: one tensor in, a tuple of tensors out.

    So PyTorch-side tools (latency measurement, evaluation with the
    model's own post-processing) take ONNX Runtime models unchanged.

    Args:
        path (str): The ``.onnx`` file (one input).
        threads (int, optional): Intra-op threads; defaults to
            ``torch.get_num_threads()``, so ONNX Runtime and PyTorch
            latencies compare at the same parallelism.
        spinning (bool): Whether idle intra-op threads spin (ONNX
            Runtime's default). Spinning threads of one session slow the
            next session of an interleaved benchmark down. Defaults to
            True.
    """

    def __init__(self, path: str, threads: Optional[int] = None,
                 spinning: bool = True):
        super().__init__()
        ort = _require('onnxruntime')
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        if not spinning:
            options.add_session_config_entry(
                'session.intra_op.allow_spinning', '0')
        self.path = path
        self.session = ort.InferenceSession(
            path, options, providers=['CPUExecutionProvider'])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f'{path} has {len(inputs)} inputs; expected '
                             f'one image tensor')
        self.input_name = inputs[0].name

    def run(self, x: np.ndarray) -> List[np.ndarray]:
        return self.session.run(None, {self.input_name: x})


@torch.no_grad()
def check_onnx(model: nn.Module, path: str, shape: Sequence[int],
               seed: int = 1) -> float:
    """Run ``path`` in onnxruntime and compare with PyTorch.

    Args:
        model (nn.Module): The model that was exported.
        path (str): The exported ``.onnx`` file.
        shape (Sequence[int]): Its input shape ``(N, C, H, W)``.
        seed (int): Seed of the random input (not the export's example
            input, so a value baked into the graph would show). Defaults
            to 1.

    Returns:
        float: The largest error over all outputs, each output's largest
        absolute difference divided by its scale (its largest absolute
        PyTorch value): float32 rounding grows with the values, so an
        absolute bound fails large outputs that are correct.
    """
    _check_shape(shape)
    model.eval()
    x = _example(shape, seed)
    return relative_error(TensorForward(model)(x),
                          OnnxRuntimeModule(path).run(x.numpy()), path)
