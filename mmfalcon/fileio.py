"""Checkpoint loading that cannot run code: the one loader every checkpoint
load goes through.

Imported by ``mmfalcon``; it registers itself as mmengine's loader of local
files, so ``load_from``, ``--resume``, ``init_cfg=dict(type='Pretrained')``
and mmengine's ``load_checkpoint`` use it too.

A checkpoint is unpickled by torch's weights-only unpickler, which refuses
every global outside an allowlist. The allowlist is torch's own plus what an
mmengine training checkpoint holds besides tensors: the message hub's
``HistoryBuffer`` and the numpy arrays, scalars and dtypes inside it
(see :func:`_safe_globals`). A file
that needs anything else is refused with :class:`UntrustedCheckpointError`
unless the user opted in (``MMFALCON_TRUST_CHECKPOINTS=1``, or the tools'
``--trust-checkpoint``).
"""
import argparse
import os
import os.path as osp
import pickle
import zipfile

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

TRUST_ENV = 'MMFALCON_TRUST_CHECKPOINTS'
TRUST_FLAG = '--trust-checkpoint'


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded; the message says why."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that needs globals outside the allowlist to load."""


def trust_checkpoints() -> None:
    """Opt in to loading checkpoints that may run code, for this process
    and the processes it starts (what ``--trust-checkpoint`` does)."""
    os.environ[TRUST_ENV] = '1'


class _TrustAction(argparse.Action):
    """Opts in when the flag is parsed, before any checkpoint is read."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        trust_checkpoints()


def add_trust_argument(parser) -> None:
    """Add ``--trust-checkpoint`` (:func:`trust_checkpoints`) to a tool's
    argument parser."""
    parser.add_argument(
        TRUST_FLAG, action=_TrustAction, default=False,
        help='load checkpoints with full pickle, which can run code: only '
        f'for files you trust (same as {TRUST_ENV}=1)')


def _trusted() -> bool:
    return os.environ.get(TRUST_ENV, '').lower() in ('1', 'true', 'yes')


def _numpy_multiarray():
    """numpy's ``multiarray`` and the names files use for it: numpy 2
    moved ``numpy.core`` to ``numpy._core``; files written under numpy 1
    name the old module."""
    try:
        from numpy._core import multiarray
        return multiarray, ('numpy._core.multiarray', 'numpy.core.multiarray')
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
        return multiarray, ('numpy.core.multiarray', )


# mmengine's default statistics. A HistoryBuffer pickles them by name, as
# getattr(HistoryBuffer, name): the one use of getattr a checkpoint has.
_HISTORY_STATISTICS = ('min', 'max', 'mean', 'current')


def _statistics_getattr(obj, name):
    """``builtins.getattr`` restricted to the lookups above."""
    if obj is not HistoryBuffer or name not in _HISTORY_STATISTICS:
        raise pickle.UnpicklingError(f'builtins.getattr({obj!r}, {name!r})')
    return getattr(HistoryBuffer, name)


def _safe_globals():
    """What an mmengine training checkpoint holds besides torch's types:
    the message hub's HistoryBuffer (numpy arrays of logged values, their
    dtypes, numpy scalars, its statistics methods by getattr)."""
    multiarray, names = _numpy_multiarray()
    allowed = [HistoryBuffer, np.ndarray, np.dtype,
               (_statistics_getattr, 'builtins.getattr')]
    for name in names:
        allowed += [(multiarray._reconstruct, f'{name}._reconstruct'),
                    (multiarray.scalar, f'{name}.scalar')]
    # np.dtype('f8') is a Float64DType instance, whose state the unpickler
    # sets only for allowlisted types (numpy >= 1.25 has these classes)
    dtype_classes = vars(getattr(np, 'dtypes', np)).values()
    return allowed + [cls for cls in dtype_classes
                      if isinstance(cls, type) and issubclass(cls, np.dtype)
                      and cls is not np.dtype]


SAFE_GLOBALS = _safe_globals()


def _offending_globals(filename):
    """The globals ``filename`` needs beyond :data:`SAFE_GLOBALS`, read
    statically from its pickle (nothing is run)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return sorted(
                torch.serialization.get_unsafe_globals_in_checkpoint(
                    filename))
    except Exception:  # noqa: BLE001 - legacy format: the message names it
        return []


def _refusal(filename, exc) -> UntrustedCheckpointError:
    offending = _offending_globals(filename)
    if offending:
        what = ', '.join(offending)
    else:  # refused while unpickling, e.g. by _statistics_getattr
        detail = str(exc).split('WeightsUnpickler error:')[-1].strip()
        what = detail.splitlines()[0] if detail else 'an object'

    return UntrustedCheckpointError(
        f'Refused to load {filename}: it needs {what}, beyond what a '
        f'checkpoint of weights and training state holds, and unpickling it '
        f'in full could run code. If you trust this file, load it with '
        f'{TRUST_FLAG} (tools) or {TRUST_ENV}=1.')


def load_checkpoint_file(filename, map_location=None):
    """Load a local checkpoint without running code from it.

    Raises:
        FileNotFoundError: no such file.
        UntrustedCheckpointError: the file needs a global outside the
            allowlist (and the user did not opt in).
        CheckpointError: the file is truncated or not a checkpoint.
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        if _trusted():
            return torch.load(filename, map_location=map_location,
                              weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(filename, map_location=map_location,
                              weights_only=True)
    except Exception as exc:
        if isinstance(exc, EOFError) or _cut_off(filename):
            raise _corrupt(filename, exc) from None
        if isinstance(exc, pickle.UnpicklingError) and not _trusted():
            raise _refusal(filename, exc) from None
        raise


def _cut_off(filename) -> bool:
    """A file that is not a whole zip, torch's format since 1.6, nor
    starts as the pickle of its legacy format."""
    with open(filename, 'rb') as f:
        legacy = f.read(1) == pickle.PROTO
    return not legacy and not checkpoint_is_complete(filename)


def _corrupt(filename, exc) -> CheckpointError:
    detail = str(exc).split('. ')[0].strip() or 'no detail'
    return CheckpointError(
        f'{filename} is not a complete checkpoint ({type(exc).__name__}: '
        f'{detail}); a crash while saving can leave a file cut off. Use an '
        f'earlier checkpoint.')


def checkpoint_is_complete(filename) -> bool:
    """Whether ``filename`` is a whole ``torch.save`` zip file (its central
    directory and every record's CRC intact); reads, never unpickles."""
    try:
        with zipfile.ZipFile(filename) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


CheckpointLoader.register_scheme(
    prefixes='', loader=load_checkpoint_file, force=True)
