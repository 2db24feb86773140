"""Params, FLOPs and median CPU latency of backbones and whole models.

Models of one input size are timed in the same process, interleaved, so
the ratios are meaningful on a shared, noisy machine; absolute times are
not. Usage: python tools/analysis/benchmark.py [--runs 30] [--markdown]
[--sizes 320 512] [--no-models] [--onnx] [--train [--batch 8]]

--train times training steps (forward + backward, batch 8) of the unfused
backbones and their peers instead. --onnx times the same models in ONNX Runtime instead, each exported as
tools/deployment/export_onnx.py exports (fused models fused first).
"""
import argparse
import copy
import os
import os.path as osp

import torch
from mmengine.config import Config

import mmfalcon
from mmfalcon.analysis import (format_table, latency_samples, timed_rows,
                               train_step_samples)
from mmfalcon.deployment import OnnxRuntimeModule, export_module
from mmfalcon.deployment.wrapper import TensorForward, input_size_from_config
from mmfalcon.apis import init_model
from mmfalcon.models import FalconNet, ParCNet

CONFIGS = ('ssdlite_falcon_coco.py', 'ssdlite_parcnet_coco.py',
           'deeplabv3_falcon_voc.py', 'deeplabv3_parcnet_voc.py')
CONFIG_DIR = osp.join(osp.dirname(__file__), '..', '..', 'configs')


def fused(model):
    model = mmfalcon.fuse_model(copy.deepcopy(model))
    model.eval()
    return model


def evaluated(model):
    model.eval()  # some mmdet/mmseg backbones' train() returns None
    return model


MMPRETRAIN_WHEEL = osp.expanduser(os.environ.get(
    'MMPRETRAIN_WHEEL',
    '~/.cache/mmfalcon/mmpretrain-1.2.0-py2.py3-none-any.whl'))
MMPRETRAIN_FETCH = ('pip download --no-deps mmpretrain==1.2.0 '
                    '-d ~/.cache/mmfalcon')


def _mmpretrain_from_wheel(wheel):
    """mmpretrain's MobileViT class, imported straight from its wheel (a zip
    archive) without running the ``__init__`` of ``mmpretrain``, its
    ``models``, ``models.backbones`` or ``models.utils``: those import every
    dataset, backbone and helper, hence torchvision (no build for this CPU
    torch), einops and importlib_metadata. Empty stand-ins of these packages
    point their ``__path__`` into the wheel, so submodules load as usual;
    the utils stand-in gets the names of the few helper files that
    MobileViT's own imports (MobileNetV2, the ViT encoder layer) use."""
    import importlib
    import sys
    import types
    for name in ('mmpretrain', 'mmpretrain.models',
                 'mmpretrain.models.backbones', 'mmpretrain.models.utils'):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [osp.join(wheel, *name.split('.'))]
            sys.modules[name] = package
    utils = sys.modules['mmpretrain.models.utils']
    for helper in ('helpers', 'make_divisible', 'norm', 'layer_scale',
                   'attention', 'swiglu_ffn', 'embed'):
        module = importlib.import_module(f'mmpretrain.models.utils.{helper}')
        for key, value in vars(module).items():
            # only what the file defines, not what it imports (embed.py
            # imports mmcv's build_norm_layer, norm.py defines its own)
            if getattr(value, '__module__', None) == module.__name__:
                setattr(utils, key, value)
    return importlib.import_module(
        'mmpretrain.models.backbones.mobilevit').MobileViT


def mobilevit_s():
    """mmpretrain 1.2.0's MobileViT-S (stages 3-4, as SSDLite and DeepLabV3
    heads take them) and a note on how it was loaded, or ``None`` and the
    reason it is unavailable.

    An installed mmpretrain is used as it is; else its wheel at
    ``$MMPRETRAIN_WHEEL`` (default under ``~/.cache/mmfalcon``), fetched by
    ``MMPRETRAIN_FETCH``, is imported without its torchvision imports."""
    try:
        from mmpretrain.models.backbones import MobileViT
        note = 'mmpretrain MobileViT'
    except Exception as exc:  # noqa: BLE001 - any import failure
        if not osp.isfile(MMPRETRAIN_WHEEL):
            return None, (f'unavailable: mmpretrain import failed '
                          f'({exc!r:.60}); fetch {MMPRETRAIN_FETCH}')
        try:
            MobileViT = _mmpretrain_from_wheel(MMPRETRAIN_WHEEL)
        except Exception as exc:  # noqa: BLE001 - any import failure
            return None, f'unavailable: {MMPRETRAIN_WHEEL}: {exc!r:.80}'
        note = ('mmpretrain 1.2.0 MobileViT, model code imported from the '
                'wheel without the package __init__ (torchvision)')
    return evaluated(MobileViT(arch='small', out_indices=(3, 4))), note


def pair(name, model, refs=(), sfconv_forms=None):
    """Unfused + fused rows of one model; each fused row is compared with
    the unfused one and with the reference rows ``refs``. ``sfconv_forms``
    (from :func:`falconnet_forms`) maps an SF-Conv impl to the model built
    with it, one fused row each; by default one fused row of ``model``."""
    rows = [(f'{name} unfused', model, '', list(refs))]
    for impl, form in (sfconv_forms or {None: model}).items():
        note = f'SF-Conv as {impl}' if impl else ''
        rows.append((f'{name} fused' + (f' ({impl})' if impl else ''),
                     fused(form), note,
                     [('x unfused', f'{name} unfused')] + list(refs)))
    return rows


def falconnet_forms(sfconv_impls, **kwargs):
    """``FalconNet(**kwargs)`` in eval mode and, per impl in
    ``sfconv_impls``, a FalconNet with its weights built with that
    ``sfconv_impl`` (``None``: the model itself)."""
    model = evaluated(FalconNet(**kwargs))
    forms = {}
    for impl in sfconv_impls:
        if impl is None:
            forms[impl] = model
            continue
        forms[impl] = evaluated(FalconNet(sfconv_impl=impl, **kwargs))
        forms[impl].load_state_dict(model.state_dict())
    return model, forms


def backbones_at(size, sfconv_impls=('matmul', 'conv')):
    """(name, model, note, [(ratio column, reference row)]) per backbone.

    Fused FalconNet gets a row per PyTorch SF-Conv form in
    ``sfconv_impls``; ``(None, )`` for ONNX, whose export picks its own.

    ParC-Net-S runs at output stride 32 at every size, as MobileViT-S does
    (the like-for-like row); above 320 also at output stride 16, the
    DeepLabV3 backbone."""
    vit, vit_note = mobilevit_s()
    vs_vit = [('x MobileViT-S', 'MobileViT-S')] if vit else []
    rows = []
    for out_stride in (32, ) if size <= 320 else (32, 16):
        rows += pair(f'ParC-Net-S os{out_stride}',
                     evaluated(ParCNet(arch='s', out_indices=(4, 5),
                                       out_stride=out_stride)), vs_vit)
    rows.append(('MobileViT-S', vit, vit_note, []))
    if size <= 320:
        from mmdet.models.backbones import MobileNetV2
        vs_mnv2 = [('x MobileNetV2', 'mmdet MobileNetV2 (4, 7)')]
        falconnet, forms = falconnet_forms(sfconv_impls, out_indices=(2, 3))
        rows = pair('FalconNet', falconnet, vs_mnv2, forms) + [
            ('mmdet MobileNetV2 (4, 7)',
             evaluated(MobileNetV2(out_indices=(4, 7))), '', [])] + rows
    else:
        from mmseg.models.backbones import MobileNetV2
        vs_mnv2 = [('x MobileNetV2', 'mmseg MobileNetV2 os8')]
        rows = pair('FalconNet os8',
                    evaluated(FalconNet(out_indices=(2, 3), out_stride=8)),
                    vs_mnv2) + [
            ('mmseg MobileNetV2 os8', evaluated(MobileNetV2(
                strides=(1, 2, 2, 1, 1, 1, 1),
                dilations=(1, 1, 1, 2, 2, 4, 4),
                out_indices=(1, 2, 4, 6))), '', [])] + rows
    return rows


def models_at(size):
    """Whole models (tensor forward) of the configs whose input is size."""
    rows = []
    for name in CONFIGS:
        cfg = Config.fromfile(osp.join(CONFIG_DIR, name))
        if input_size_from_config(cfg)[0] != size:
            continue
        model = TensorForward(init_model(cfg, fuse=False))
        rows += pair(osp.splitext(osp.basename(name))[0], evaluated(model))
    return rows


def onnx_rows(entries, shape, warmup, runs):
    """The rows of ``entries`` timed in ONNX Runtime, interleaved: each
    model exported like tools/deployment/export_onnx.py does (fixed input
    shape, opset 17) and run by onnxruntime's CPU provider at the same
    thread count. Params and FLOPs are the PyTorch model's. A ratio is the
    median of the per-round ratios, its quartiles in the note; a model
    that does not export is unavailable, with the reason."""
    import tempfile
    size = shape[-1]
    # deployment runs fused models only (an unfused ParC-Net does not
    # export: its kernels are resized to the input inside the graph)
    entries = [entry for entry in entries
               if not entry[0].endswith(' unfused')]
    runtimes, notes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model, note, _) in enumerate(entries):
            notes[name] = note
            if model is None:
                continue
            path = osp.join(tmp, f'{i}.onnx')
            try:
                export_module(model, shape, path)
                runtimes[name] = OnnxRuntimeModule(path)
            except Exception as exc:  # noqa: BLE001 - reported in the row
                notes[name] = f'unavailable: ONNX export failed ({exc!r:.80})'
        times = latency_samples(runtimes, shape, warmup, runs)
    return timed_rows(entries, times, f' @{size} ORT', shape, notes)


def train_rows(size, batch, warmup, runs):
    """Training-step rows (forward + backward, train mode, batch ``batch``)
    of the unfused backbones and their peers, interleaved; FalconNet also
    with its branches run one by one instead of folded by batch
    statistics."""
    from mmdet.models.backbones import MobileNetV2
    vit, vit_note = mobilevit_s()
    parc_out_stride = 32 if size <= 320 else 16
    branches = FalconNet(out_indices=(2, 3), fold_batch_stats=False)
    entries = [
        ('FalconNet-base', FalconNet(out_indices=(2, 3)), '',
         [('x MobileNetV2', 'mmdet MobileNetV2 (4, 7)')]),
        ('FalconNet-base, branches one by one', branches,
         'fold_batch_stats=False',
         [('x MobileNetV2', 'mmdet MobileNetV2 (4, 7)'),
          ('x folded', 'FalconNet-base')]),
        (f'ParC-Net-S os{parc_out_stride}',
         ParCNet(arch='s', out_indices=(4, 5), out_stride=parc_out_stride),
         '', [('x MobileNetV2', 'mmdet MobileNetV2 (4, 7)')] +
         ([('x MobileViT-S', 'MobileViT-S')] if vit else [])),
        ('mmdet MobileNetV2 (4, 7)', MobileNetV2(out_indices=(4, 7)), '', []),
        ('MobileViT-S', vit, vit_note, []),
    ]
    shape = (batch, 3, size, size)
    available = {name: m for name, m, _, _ in entries if m is not None}
    times = train_step_samples(available, shape, warmup, runs)
    return timed_rows(entries, times, f' train @{size} x{batch}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[320, 512])
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--no-models', action='store_true',
                        help='backbones only, not the configs\' models')
    parser.add_argument('--onnx', action='store_true',
                        help='time the models in ONNX Runtime (exported '
                        'as export_onnx.py does) instead of PyTorch')
    parser.add_argument('--train', action='store_true',
                        help='training steps (forward + backward) of the '
                        'backbones instead of inference')
    parser.add_argument('--batch', type=int, default=8,
                        help='batch of --train (inference is batch 1)')
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = []
    for size in args.sizes:
        if args.train:
            table += train_rows(size, args.batch, args.warmup, args.runs)
            continue
        shape = (1, 3, size, size)
        entries = backbones_at(size, (None, ) if args.onnx else
                               ('matmul', 'conv'))
        if not args.no_models:
            entries += models_at(size)
        if args.onnx:
            table += onnx_rows(entries, shape, args.warmup, args.runs)
            continue
        available = {name: m for name, m, _, _ in entries if m is not None}
        times = latency_samples(available, shape, args.warmup, args.runs)
        table += timed_rows(entries, times, f' @{size}', shape)
    if args.train:
        print(f'Training step (train mode, forward + backward of the sum of '
              f'the outputs\' means), batch {args.batch}, '
              f'{torch.get_num_threads()} threads, median of {args.runs} '
              f'interleaved rounds after {args.warmup} warm-up rounds; '
              'ratios are medians of per-round ratios.')
    else:
        print(('ONNX Runtime (CPU provider), ' if args.onnx else '') +
              f'Batch 1, {torch.get_num_threads()} threads, median of '
              f'{args.runs} interleaved rounds after {args.warmup} warm-up '
              'rounds; ratios are medians of per-round ratios.')
    print(format_table(table, markdown=args.markdown))


if __name__ == '__main__':
    main()
