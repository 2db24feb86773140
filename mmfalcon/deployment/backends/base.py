"""What every deploy runtime provides: export a fused model for one input
shape and precision, load what it wrote, run it on numpy inputs.

A backend's runtime packages are optional: they are imported only when a
backend is used (:meth:`Backend.require`), never on ``import mmfalcon``.
"""
import os
import os.path as osp
import re
import tempfile
from importlib import import_module
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.nn as nn

from ..onnx import export_module, export_onnx
from ..parc_form import check_parc_form
from ..runtime import RuntimeModule
from ..sfconv_form import check_sfconv_form

PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')


class BackendNotInstalledError(ImportError):
    """A runtime package a backend needs is not installed; the message
    names it and the pip command that installs it."""


class UnsupportedOpError(RuntimeError):
    """The runtime cannot take an op of the exported graph; the message
    names the op and the layers (ONNX nodes) that hold it."""


class Backend:
    """One deploy runtime. Subclasses set the class attributes and
    implement :meth:`convert` and :meth:`load`.

    The graph every backend starts from is the project's ONNX export
    (:func:`~mmfalcon.deployment.export_onnx`: the fused tensor forward,
    SF-Conv pairs and ParC mixers in their exact export forms); a backend
    converts that file into its runtime's own format.

    Attributes:
        name (str): The ``--backend`` name.
        extra (str): The ``pip install "mmfalcon[EXTRA]"`` extra that
            installs the packages.
        packages (dict): Module name -> pip name of each package every
            precision needs.
        int8_packages (dict): The same, for what INT8 needs besides.
        precisions (tuple[str]): The precisions it exports, of
            :data:`PRECISIONS`.
        suffixes (tuple[str]): The suffixes of the files it writes after
            the output prefix; the first is its model file.
        sfconv_form (str): The form its exports give fused SF-Conv pairs,
            one of :data:`~mmfalcon.deployment.sfconv_form.SFCONV_FORMS`:
            the fastest measured in this runtime (docs/deployment.md).
        parc_form (str): The token mixer form its exports give fused ParC
            blocks, one of :data:`~mmfalcon.deployment.parc_form.
            PARC_FORMS`: the fastest measured in this runtime.

    Args:
        threads (int, optional): Threads a loaded model runs on; defaults
            to ``torch.get_num_threads()``, so runtimes compare with
            PyTorch at the same parallelism.
        sfconv_form (str, optional): Another SF-Conv export form than the
            runtime's own, e.g. to measure them (``benchmark.py
            --sfconv-forms``). Defaults to None.
        parc_form (str, optional): Another ParC export form than the
            runtime's own (``benchmark.py --parc-forms``). Defaults to
            None.
    """
    name = ''
    extra = ''
    packages: Dict[str, str] = {}
    int8_packages: Dict[str, str] = {}
    precisions: Tuple[str, ...] = ()
    suffixes: Tuple[str, ...] = ()
    sfconv_form = 'auto'
    parc_form = 'merged'

    def __init__(self, threads: Optional[int] = None,
                 sfconv_form: Optional[str] = None,
                 parc_form: Optional[str] = None):
        self.threads = threads
        if sfconv_form is not None:
            check_sfconv_form(sfconv_form)
            self.sfconv_form = sfconv_form
        if parc_form is not None:
            check_parc_form(parc_form)
            self.parc_form = parc_form

    def require(self, precision: str = 'fp32') -> None:
        """Import the packages ``precision`` needs (:attr:`packages`, and
        :attr:`int8_packages` for INT8).

        Args:
            precision (str): One of :attr:`precisions`. Defaults to
                ``'fp32'``.

        Raises:
            BackendNotInstalledError: naming the missing package and the
                pip command.
        """
        self.check_precision(precision)
        needed = dict(self.packages)
        if precision == 'int8':
            needed.update(self.int8_packages)
        for module, dist in needed.items():
            try:
                import_module(module)
            except ImportError as exc:
                raise BackendNotInstalledError(
                    f'the {self.name} backend needs the package {dist!r}, '
                    f'which is not installed ({exc}); install it with: '
                    f'pip install "mmfalcon[{self.extra}]" (or: pip install '
                    f'{" ".join(needed.values())})') from exc

    def check_precision(self, precision: str) -> None:
        """Raise a ValueError listing what is supported unless this
        backend exports ``precision``.

        Args:
            precision (str): The precision asked for.
        """
        if precision not in self.precisions:
            from . import BACKENDS
            supported = '; '.join(f'{name}: {", ".join(cls.precisions)}'
                                  for name, cls in BACKENDS.items())
            raise ValueError(
                f'the {self.name} backend does not export precision '
                f'{precision!r}; it exports {", ".join(self.precisions)} '
                f'(supported: {supported})')

    def files(self, out: str) -> List[str]:
        """The files :meth:`export` writes for an output path.

        Args:
            out (str): A prefix (``work_dir/end2end``, mmdeploy's layout),
                or the prefix with the backend's model file suffix
                (``end2end.onnx``, ``end2end.xml``, ``end2end.param``).

        Returns:
            list[str]: One path per suffix of :attr:`suffixes`.
        """
        main = self.suffixes[0]
        prefix = out[:-len(main)] if out.endswith(main) else out
        other = next((s for s in _MODEL_SUFFIXES if s != main
                      and prefix.endswith(s)), None)
        if other is not None or not osp.basename(prefix):
            raise ValueError(
                f'output {out!r}: the {self.name} backend writes '
                f'{" + ".join(self.suffixes)} files; pass a path prefix '
                f'(e.g. work_dir/end2end) or a {main} file')
        return [prefix + suffix for suffix in self.suffixes]

    def export(self, model: nn.Module, shape: Sequence[int], out: str,
               precision: str = 'fp32',
               calibration: Optional[Sequence[np.ndarray]] = None
               ) -> List[str]:
        """Export a fused detector / segmentor for one input shape.

        Args:
            model (nn.Module): The fused model (not changed); its tensor
                forward is exported (:func:`~mmfalcon.deployment.
                export_onnx`).
            shape (Sequence[int]): Input shape ``(N, C, H, W)``.
            out (str): Output prefix or model file (:meth:`files`).
            precision (str): One of :attr:`precisions`. Defaults to
                ``'fp32'``.
            calibration (Sequence[np.ndarray], optional): Preprocessed
                images of ``shape`` to calibrate INT8 on
                (:func:`~mmfalcon.deployment.calibration_inputs`); required
                for ``'int8'`` only.

        Returns:
            list[str]: The files written.
        """
        return self._export(export_onnx, model, shape, out, precision,
                            calibration)

    def export_module(self, module: nn.Module, shape: Sequence[int],
                      out: str, precision: str = 'fp32',
                      calibration: Optional[Sequence[np.ndarray]] = None
                      ) -> List[str]:
        """Export any fused module that maps one image tensor to tensors,
        e.g. a bare backbone (:func:`~mmfalcon.deployment.export_module`);
        arguments as :meth:`export`.

        Returns:
            list[str]: The files written.
        """
        return self._export(export_module, module, shape, out, precision,
                            calibration)

    def _export(self, exporter: Callable, module: nn.Module,
                shape: Sequence[int], out: str, precision: str,
                calibration: Optional[Sequence[np.ndarray]]) -> List[str]:
        """Write the float ONNX file of ``module`` with ``exporter``
        (:func:`~mmfalcon.deployment.export_onnx` or ``export_module``) into
        a temporary folder and :meth:`convert` it into :meth:`files` of
        ``out``; nothing half-converted is left behind on an error."""
        self.require(precision)
        if precision == 'int8' and not calibration:
            raise ValueError(f'{self.name} INT8 export needs calibration '
                             f'images; got none')
        paths = self.files(out)
        directory = osp.dirname(paths[0])
        if directory:
            os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = osp.join(tmp, 'fp32.onnx')
            exporter(module, shape, onnx_path, sfconv_form=self.sfconv_form,
                     parc_form=self.parc_form)
            try:
                self.convert(onnx_path, paths, shape, precision, calibration)
            except BaseException:
                for path in paths:
                    if osp.isfile(path):
                        os.remove(path)
                raise
        return paths

    def convert(self, onnx_path: str, paths: List[str], shape: Sequence[int],
                precision: str,
                calibration: Optional[Sequence[np.ndarray]]) -> None:
        """Convert the exported float ONNX file into the runtime's files.

        Args:
            onnx_path (str): The float ``.onnx`` file
                (:func:`~mmfalcon.deployment.export_onnx`).
            paths (list[str]): The files to write (:meth:`files`).
            shape (Sequence[int]): Its input shape ``(N, C, H, W)``.
            precision (str): One of :attr:`precisions`.
            calibration (Sequence[np.ndarray], optional): INT8 calibration
                inputs of ``shape`` (see :meth:`export`).

        Raises:
            UnsupportedOpError: where the runtime cannot take an op.
        """
        raise NotImplementedError

    def load(self, out: str, precision: str = 'fp32') -> RuntimeModule:
        """The model :meth:`export` wrote, loaded to run on the CPU.

        Args:
            out (str): The output path given to :meth:`export`.
            precision (str): The precision it was exported in: a compile
                setting in some runtimes, so it must be given again.
                Defaults to ``'fp32'``.
        """
        raise NotImplementedError


# Model file suffixes of all backends (a path ending in another backend's
# is a mistake, not a prefix).
_MODEL_SUFFIXES = ('.onnx', '.xml', '.param', '.bin')


def nodes_of_types(onnx_path: str, op_types: Sequence[str]) -> List[str]:
    """``'op_type (layer, ...)'`` for each op type, the layers being the
    names of the ONNX nodes of that type (the exporter names a node after
    its module's path).

    Args:
        onnx_path (str): The ONNX file.
        op_types (Sequence[str]): ``Op`` or ``domain.Op`` names.
    """
    from ..onnx import _require
    graph = _require('onnx').load(onnx_path).graph
    named = []
    for op in dict.fromkeys(op_types):
        layers = [node.name or node.output[0] for node in graph.node
                  if op in (node.op_type, f'{node.domain}.{node.op_type}')]
        named.append(f'{op} ({", ".join(layers)})' if layers else op)
    return named


def unsupported_ops(runtime: str, onnx_path: str, op_types: Sequence[str],
                    message: str) -> UnsupportedOpError:
    """The error naming the ops a runtime cannot take and their layers.

    Args:
        runtime (str): The runtime's (or its converter's) name.
        onnx_path (str): The ONNX file it was given.
        op_types (Sequence[str]): The ops it named (:func:`ops_in_message`).
        message (str): Its own error or log; the last lines are quoted.
    """
    lines = [line for line in message.strip().splitlines()
             if not re.fullmatch(r'(.*\.\.\.)?\s*[\d.]+ms', line)]  # timings
    tail = '\n'.join(lines[-6:])
    ops = '; '.join(nodes_of_types(onnx_path, op_types)) or 'unknown'
    return UnsupportedOpError(f'{runtime} cannot take the op {ops} of the '
                              f'exported graph. {runtime} says: {tail}')


def ops_in_message(message: str, patterns: Sequence[str]) -> List[str]:
    """The op names a runtime's error message names.

    Args:
        message (str): The message.
        patterns (Sequence[str]): Regexes with one group capturing an op
            name or a comma-separated list of them.
    """
    ops = []
    for pattern in patterns:
        for found in re.findall(pattern, message):
            ops += [op.strip() for op in found.split(',') if op.strip()]
    return ops
