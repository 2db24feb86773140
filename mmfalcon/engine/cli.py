"""Config handling shared by tools/train.py and tools/test.py, and the
command-line pieces the deployment tools share.

The tools mirror mmdet's / mmseg's CLI and are task-agnostic: the task
(detection or segmentation) comes from the config's ``default_scope``.
"""
import argparse
import logging
import numbers
import os
import os.path as osp
import sys
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner
from torch.nn.parallel import DistributedDataParallel

from mmfalcon.fileio import CheckpointError, add_trust_argument

# Dataset keys that name files every sample needs (mmdet, mmseg).
_SAMPLE_FILES = ('img_path', 'seg_map_path')


class DataError(ValueError):
    """A dataset that cannot be used; the message names it and why."""


# Norm layers that only train on CUDA when synchronised across processes,
# and the SyncBN that also trains on CPU processes, which replaces them there.
_CUDA_ONLY_NORMS = ('SyncBN', 'MMSyncBN')
_CPU_SYNC_BN = 'mmfalcon.CPUSyncBN'


def add_common_args(parser):
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='directory for logs and outputs')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value (xxx=yyy format)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_trust_argument(parser)


class _ShapeAction(argparse.Action):
    """``--shape H W`` or ``--shape SIZE`` (a square), stored as (H, W)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (1, 2):
            parser.error(f'{option_string} takes H W or one size, got '
                         f'{" ".join(map(str, values))}')
        setattr(namespace, self.dest, tuple(values) * (3 - len(values)))


def add_shape_argument(parser) -> None:
    """``--shape``: the input (H, W), None for the config's own (see
    :func:`mmfalcon.deployment.input_size_from_config`)."""
    parser.add_argument(
        '--shape', type=int, nargs='+', metavar='SIZE', action=_ShapeAction,
        help='input H W (or one size for a square); default: the test '
        "pipeline's fixed resize, else 320 320")


class _CalibImagesAction(argparse.Action):
    """``--calib-images N``, N >= 1: checked when parsed, before a tool
    builds its model."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values < 1:
            parser.error(f'{option_string}: the number of calibration images '
                         f'must be >= 1, got {values}')
        setattr(namespace, self.dest, values)


def add_calib_images_argument(parser, help: str) -> None:
    """``--calib-images``: how many of the config's test images INT8
    calibrates on (default 32, at least 1).

    Args:
        parser (ArgumentParser): The tool's parser.
        help (str): The flag's help, in the tool's words.
    """
    parser.add_argument('--calib-images', type=int, default=32,
                        action=_CalibImagesAction, help=help)


def add_evaluate_arguments(parser, help: str) -> None:
    """``--evaluate`` (on the config's test set, see
    :func:`mmfalcon.deployment.evaluate`) and ``--limit N`` (its first N
    images only); :func:`print_test_metrics` prints the results.

    Args:
        parser (ArgumentParser): The tool's parser.
        help (str): The help of ``--evaluate``: what the tool evaluates.
    """
    parser.add_argument('--evaluate', action='store_true', help=help)
    parser.add_argument('--limit', type=int,
                        help='evaluate the first LIMIT test images only')


def print_test_metrics(name: str, metrics: dict) -> None:
    """Print ``'{name} on the test set: key: value, ...'``, the numeric
    metrics of an evaluation, e.g. ``'int8 on the test set:
    coco/bbox_mAP: 0.7420, ...'``."""
    # mmseg's metrics are numpy scalars, mmdet's Python floats
    print(f'{name} on the test set: ' + ', '.join(
        f'{key}: {float(value):.4f}' for key, value in metrics.items()
        if isinstance(value, numbers.Real)))


def require_file(path: str, what: str) -> None:
    """End the tool with one line when ``path`` (the tool's ``what``, e.g.
    ``'checkpoint'``) is not a file."""
    if not osp.isfile(path):
        raise SystemExit(f'{what} {path}: no such file')


def run(main: Callable[[], None]) -> None:
    """Run a tool's ``main``.

    A checkpoint that cannot be loaded or a dataset that cannot be used
    (:func:`check_data_paths`, :func:`check_datasets`) ends the run with
    its message instead of a traceback. The process group, if any, is
    destroyed on success and on error: left to the interpreter's exit,
    its threads can abort the process (``terminate called without an
    active exception``).
    A distributed run that succeeded then exits at once, logs flushed,
    without the interpreter's teardown, which could still abort it.
    """
    distributed = False
    try:
        main()
        distributed = torch_dist.is_available() and torch_dist.is_initialized()
    except (CheckpointError, DataError) as exc:
        raise SystemExit(f'error: {exc}') from None
    finally:
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    if distributed:
        # Even then the interpreter's own teardown can abort a rank (a C++
        # thread of the distributed runtime outlives it; seen with gloo on
        # a loaded machine, after all Python code had run). The work is
        # done: flush and leave without that teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def load_config(args) -> Config:
    """Load ``args.config`` and apply the common flags.

    A distributed launch (``args.launcher != 'none'``) on a machine
    without CUDA is made to run on CPU processes (gloo, SyncBN that runs
    there; see :func:`_cpu_distributed`).
    """
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.launcher != 'none' and not torch.cuda.is_available():
        _cpu_distributed(cfg)
    return cfg


def _replace_sync_bn(node) -> int:
    """Turn every SyncBN norm config under ``node`` (``SyncBN``,
    ``MMSyncBN``, any scope) into :class:`~mmfalcon.models.layers.
    batch_stats.CPUSyncBatchNorm`, in place; returns how many."""
    count = 0
    if isinstance(node, dict):
        kind = node.get('type')
        if isinstance(kind, str) and kind.split('.')[-1] in _CUDA_ONLY_NORMS:
            node['type'] = _CPU_SYNC_BN
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        count += sum(_replace_sync_bn(value) for value in node)
    return count


def _cpu_distributed(cfg: Config) -> None:
    """Make a distributed config run on CPU processes (no CUDA).

    The NCCL backend becomes gloo; the model's SyncBN layers become
    ``mmfalcon.CPUSyncBN``, which synchronises their statistics across the
    CPU processes (torch's SyncBatchNorm trains on GPUs only); the runner's
    ``sync_bn`` is dropped (it converts to torch's), so its BNs stay BN;
    DDP gets no ``device_ids``, and the gloo process group is started here,
    because mmengine's launcher calls ``torch.cuda.set_device``. Each
    change is logged.
    """
    if cfg.launcher != 'pytorch':
        raise ValueError(
            f'--launcher {cfg.launcher} needs CUDA, which is unavailable; '
            f'without CUDA use --launcher pytorch (tools/dist_train.sh)')
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg.backend = 'gloo'
        print_log('CUDA is unavailable: distributed backend nccl -> gloo.',
                  logger='current')
    converted = _replace_sync_bn(cfg.model)
    if converted:
        print_log(f'CUDA is unavailable: {converted} SyncBN setting(s) of '
                  f'the model -> {_CPU_SYNC_BN} (synchronised across the CPU '
                  'processes).', logger='current')
    if cfg.get('sync_bn') is not None:
        print_log(f'CUDA is unavailable: sync_bn={cfg.sync_bn!r} dropped, '
                  'BN stays BN (not synchronised across processes).',
                  logger='current')
        cfg.sync_bn = None
    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cls = MODEL_WRAPPERS.get(
        wrapper.get('type', 'MMDistributedDataParallel'))
    if isinstance(wrapper_cls, type) and issubclass(wrapper_cls,
                                                    DistributedDataParallel):
        wrapper.setdefault('device_ids', None)  # a CPU module takes none
    cfg.model_wrapper_cfg = wrapper
    if not torch_dist.is_initialized():
        timeout = dist_cfg.get('timeout')
        kwargs = {} if timeout is None else dict(
            timeout=timedelta(seconds=timeout))
        torch_dist.init_process_group(backend=dist_cfg.backend, **kwargs)


def enable_amp(cfg: Config) -> None:
    """Train the config in mixed precision: mmengine's ``AmpOptimWrapper``
    (float16, dynamic loss scale) with CUDA, else bfloat16 autocast on the
    CPU (:class:`~mmfalcon.engine.CPUAmpOptimWrapper`), where mmengine's
    wrapper would stop the run with an assertion."""
    wrapper = cfg.optim_wrapper
    if torch.cuda.is_available():
        if wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config.',
                      logger='current')
        else:
            wrapper.type = 'AmpOptimWrapper'
            wrapper.loss_scale = 'dynamic'
        return
    # the float16 wrapper's own arguments do not apply to bfloat16
    for key in ('loss_scale', 'dtype', 'use_fsdp'):
        wrapper.pop(key, None)
    wrapper.type = 'mmfalcon.CPUAmpOptimWrapper'
    print_log('CUDA is unavailable: AMP trains in bfloat16 autocast on the '
              'CPU.', logger='current')


def build_runner(cfg: Config) -> Runner:
    """Build the runner the config asks for (``runner_type``)."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def _leaf_configs(dataset_cfg):
    """The dataset configs under wrappers (ConcatDataset, RepeatDataset)."""
    inner = dataset_cfg.get('dataset', dataset_cfg.get('datasets'))
    if inner is None:
        return [dataset_cfg]
    inner = inner if isinstance(inner, (list, tuple)) else [inner]
    return [leaf for cfg in inner for leaf in _leaf_configs(cfg)]


def _split_leaf_configs(cfg: Config, split: str):
    """The leaf dataset configs of ``cfg``'s ``{split}_dataloader``."""
    loader = cfg.get(f'{split}_dataloader')
    return _leaf_configs(loader['dataset']) if loader else []


def _built_leaves(dataset):
    """The datasets under built wrappers (``.datasets``, ``.dataset``)."""
    inner = getattr(dataset, 'datasets', None) or getattr(
        dataset, 'dataset', None)
    if inner is None:
        return [dataset]
    inner = inner if isinstance(inner, (list, tuple)) else [inner]
    return [leaf for child in inner for leaf in _built_leaves(child)]


def _is_local(data_root, backend_args) -> bool:
    """Whether a dataset reads local files (paths without a URI scheme, no
    other file backend): only those are checked here."""
    backend = (backend_args or {}).get('backend', 'local')
    return backend == 'local' and '://' not in (data_root or '')


def _data_paths(leaf_cfg):
    """``(what, path, is_folder)`` of the files a dataset config names:
    its ann_file, then its data_prefix folders, joined to data_root as
    mmengine's ``BaseDataset`` joins them."""
    root = leaf_cfg.get('data_root') or ''
    paths = []
    if leaf_cfg.get('ann_file'):
        paths.append(('ann_file', osp.join(root, leaf_cfg['ann_file']),
                      False))
    prefixes = leaf_cfg.get('data_prefix') or {}
    if isinstance(prefixes, dict):
        paths += [(f'{key} folder', osp.join(root, prefix), True)
                  for key, prefix in prefixes.items() if prefix]
    return paths


def _layout_hint(cfg: Config, data_root: str) -> str:
    """How to prepare ``data_root``: the top-level entries every dataset
    of the config reading from it expects there, e.g. ``'To prepare the
    data, put annotations/, train2017/ and val2017/ under data/coco/ ...'``.
    """
    if not data_root:
        return ''
    entries = []
    for split in ('train', 'val', 'test'):
        for leaf in _split_leaf_configs(cfg, split):
            if (leaf.get('data_root') or '') != data_root:
                continue
            for _, path, is_folder in _data_paths(leaf):
                rel = osp.relpath(path, data_root).split(os.sep)
                if rel[0] == '..':
                    continue  # an absolute path, not under data_root
                entry = rel[0] + ('/' if is_folder or len(rel) > 1 else '')
                if entry not in entries:
                    entries.append(entry)
    if not entries:
        return ''
    listed = (', '.join(entries[:-1]) + ' and ' + entries[-1]
              if len(entries) > 1 else entries[0])
    root = data_root.rstrip('/')
    return (f' To prepare the data, put {listed} under {root}/ (or make '
            f'{root} a link to a folder holding them); docs/datasets.md '
            f'has the steps.')


def check_data_paths(cfg: Config, splits) -> None:
    """Raise :class:`DataError` for a split whose dataset's annotation file
    or data folder (``data_prefix``) does not exist, saying what the
    config expects under its ``data_root``. A few ``stat`` calls, before
    the runner is built: nothing is read.

    Args:
        cfg (Config): The config.
        splits (Sequence[str]): e.g. ``('train', 'val')``.
    """
    for split in splits:
        for leaf in _split_leaf_configs(cfg, split):
            if not _is_local(leaf.get('data_root'), leaf.get('backend_args')):
                continue
            for what, path, is_folder in _data_paths(leaf):
                if not (osp.isdir if is_folder else osp.isfile)(path):
                    raise DataError(
                        f"The {split} dataset's {what} {path} does not exist."
                        + _layout_hint(cfg, leaf.get('data_root') or ''))


def _no_samples(split: str, kind: str, ann_file) -> DataError:
    """The error for ``split``'s dataset of type ``kind`` (its ann_file
    named) that has no samples."""
    return DataError(
        f'The {split} dataset ({kind}, ann_file={ann_file!r}) has no '
        f'samples: check ann_file and data_prefix, and filter_cfg, which '
        f'drops images without annotations.')


def _explain_build_failure(cfg: Config, split: str) -> None:
    """Raise :class:`DataError` when building ``split``'s dataset failed
    because a dataset under it has no samples (mmengine then stops with
    ``need at least one array to concatenate``). Parses the annotations
    again, only after such a failure; returns when it finds no empty
    dataset, so that the original error stands."""
    from mmengine.registry import DATASETS
    for leaf in _split_leaf_configs(cfg, split):
        try:
            # not serialized: an empty one then builds, to be reported
            dataset = DATASETS.build(dict(leaf, serialize_data=False))
        except Exception:
            return
        if len(dataset) == 0:
            raise _no_samples(split, type(dataset).__name__,
                              getattr(dataset, 'ann_file', None))


def _list_folder(folder: str) -> frozenset:
    """The names in ``folder``, empty when there is no such folder."""
    try:
        return frozenset(os.listdir(folder or '.'))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()


def missing_sample_files(dataset) -> list:
    """The sample files (``img_path``, ``seg_map_path``) that the data
    infos of ``dataset`` (an mmengine ``BaseDataset``) name and that do
    not exist. One directory listing per folder, not a ``stat`` per file:
    on COCO train2017 one read of train2017/ instead of 118k."""
    listings, missing = {}, []
    for idx in range(len(dataset)):
        info = dataset.get_data_info(idx)
        for key in _SAMPLE_FILES:
            path = info.get(key)
            if not path:
                continue
            cut = path.rfind(os.sep) + 1  # osp.split's cut, 10x faster
            folder, name = path[:cut], path[cut:]
            if folder not in listings:
                listings[folder] = _list_folder(folder)
            if name not in listings[folder]:
                missing.append(path)
    return missing


def check_built_dataset(dataset, split: str) -> None:
    """Raise :class:`DataError` when ``dataset`` (built, wrappers such as
    RepeatDataset included) has a dataset without samples or one naming
    sample files that do not exist (see :func:`missing_sample_files`).

    Args:
        dataset: The dataset, as the runner's dataloader holds it.
        split (str): Its split, for the message, e.g. ``'train'``.
    """
    for leaf in _built_leaves(dataset):
        kind, ann_file = type(leaf).__name__, getattr(leaf, 'ann_file', None)
        if len(leaf) == 0:
            raise _no_samples(split, kind, ann_file)
        if not (hasattr(leaf, 'get_data_info') and _is_local(
                getattr(leaf, 'data_root', None),
                getattr(leaf, 'backend_args', None))):
            continue
        missing = missing_sample_files(leaf)
        if missing:
            raise DataError(
                f'The {split} dataset ({kind}, ann_file={ann_file!r}) names '
                f'{len(missing)} file(s) that do not exist, e.g. '
                f'{missing[0]}.')


def check_datasets(runner: Runner, splits) -> None:
    """Build the runner's loops of ``splits`` and check their datasets
    (:func:`check_built_dataset`), before training or testing stops on a
    bad one deep inside mmengine.

    The datasets checked are the runner's own: its ``train()`` / ``test()``
    reuse the loops built here (mmengine builds them lazily, on first
    use), so each annotation file is parsed once. Only a failed build
    parses again, to name an empty dataset (:func:`_explain_build_failure`).

    Args:
        runner (Runner): The runner, as :func:`build_runner` returns it.
        splits (Sequence[str]): e.g. ``('train', 'val')``.
    """
    for split in splits:
        try:
            loop = getattr(runner, f'{split}_loop')
        except Exception:
            _explain_build_failure(runner.cfg, split)
            raise
        if loop is not None:
            check_built_dataset(loop.dataloader.dataset, split)
