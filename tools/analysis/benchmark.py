"""Params, FLOPs and median CPU latency of backbones and whole models.

Models of one input size are timed in the same process, interleaved, so
the ratios are meaningful on a shared, noisy machine; absolute times are
not. Usage: python tools/analysis/benchmark.py [--runs 30] [--markdown]
[--sizes 320 512] [--no-models] [--backend pytorch|onnxruntime|openvino|
ncnn [--sfconv-forms FORM ...] [--parc-forms FORM ...]] [--train [--batch 8]
[--compile [BACKEND]]]

--backend times the same rows in a deploy runtime instead of PyTorch: each
fused model exported as tools/deployment/export.py exports it (fp32), one
session or compiled model per row, idle threads not spinning. --train
times training steps (forward + backward, batch 8) of the unfused
backbones and their peers instead; --compile adds FalconNet-base and
ParC-Net-S compiled by torch.compile. The CPU's model and vector ISA head
the output: ratios move by half between CPUs.
"""
import argparse
import copy
import itertools
import os
import os.path as osp

import torch
from mmengine.config import Config

import mmfalcon
from mmfalcon.analysis import (describe_cpu, format_table, latency_samples,
                               memory_bandwidth, onnx_traffic, timed_rows,
                               train_step_samples)
from mmfalcon.deployment import export_module
from mmfalcon.deployment.backends import BACKENDS, get_backend
from mmfalcon.deployment.parc_form import PARC_FORMS
from mmfalcon.deployment.sfconv_form import SFCONV_FORMS
from mmfalcon.deployment.wrapper import TensorForward, input_size_from_config
from mmfalcon.apis import init_model
from mmfalcon.models import FalconNet, ParCNet
from mmfalcon.models.layers.parc import ParCBlock
from mmfalcon.models.layers.sfconv import FactorizedPointwise

CONFIGS = ('ssdlite_falcon_coco.py', 'ssdlite_parcnet_coco.py',
           'deeplabv3_falcon_voc.py', 'deeplabv3_parcnet_voc.py')
CONFIG_DIR = osp.join(osp.dirname(__file__), '..', '..', 'configs')
# mmdet's own SSDLite-MobileNetV2, the whole-model peer of SSDLite-FalconNet
MMDET_SSDLITE = 'ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py'
RUNTIMES = ('pytorch', ) + tuple(BACKENDS)
# appended to the row names of each runtime
# runtime -> (its name, the module giving its version, how it runs)
RUNTIME_NAMES = dict(
    pytorch=('PyTorch', 'torch', 'eager'),
    onnxruntime=('ONNX Runtime', 'onnxruntime', 'CPU provider, fp32'),
    openvino=('OpenVINO', 'openvino', 'CPU plugin, f32 inference precision'),
    ncnn=('ncnn', 'ncnn', 'fp32: fp16 and bf16 storage off'))
RUNTIME_TAGS = dict(pytorch='', onnxruntime=' ORT', openvino=' OpenVINO',
                    ncnn=' ncnn')


# Peers run fused too (their conv + BN pairs folded), as every runtime and
# tools/deployment/export.py run them.
PEER_NOTE = 'BN folded (fuse_model)'


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
    rows.append(('MobileViT-S', vit and fused(vit),
                 f'{vit_note}; {PEER_NOTE}' if vit else vit_note, []))
    if size <= 320:
        from mmdet.models.backbones import MobileNetV2
        vs_mnv2 = [('x MobileNetV2', 'mmdet MobileNetV2 (4, 7)')]
        falconnet, forms = falconnet_forms(sfconv_impls, out_indices=(2, 3))
        rows = pair('FalconNet', falconnet, vs_mnv2, forms) + [
            ('mmdet MobileNetV2 (4, 7)',
             fused(MobileNetV2(out_indices=(4, 7))), PEER_NOTE, [])] + rows
    else:
        from mmseg.models.backbones import MobileNetV2
        vs_mnv2 = [('x MobileNetV2', 'mmseg MobileNetV2 os8')]
        rows = pair('FalconNet os8',
                    evaluated(FalconNet(out_indices=(2, 3), out_stride=8)),
                    vs_mnv2) + [
            ('mmseg MobileNetV2 os8', fused(MobileNetV2(
                strides=(1, 2, 2, 1, 1, 1, 1),
                dilations=(1, 1, 1, 2, 2, 4, 4),
                out_indices=(1, 2, 4, 6))), PEER_NOTE, [])] + rows
    return rows


def mmdet_config(name):
    """The path of one of mmdet's own configs in its installed package."""
    import mmdet
    return osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', name)


def models_at(size):
    """Whole models (tensor forward) of the configs whose input is size;
    the SSDLite ones with their ratio to mmdet's own SSDLite-MobileNetV2
    (fused, as export.py fuses it) when that takes the same input."""
    rows, peer = [], []
    cfg = Config.fromfile(mmdet_config(MMDET_SSDLITE))
    if input_size_from_config(cfg)[0] == size:
        peer = [('mmdet SSDLite-MobileNetV2',
                 fused(TensorForward(init_model(cfg, fuse=False))),
                 f'{MMDET_SSDLITE}; {PEER_NOTE}', [])]
    for name in CONFIGS:
        cfg = Config.fromfile(osp.join(CONFIG_DIR, name))
        if input_size_from_config(cfg)[0] != size:
            continue
        refs = [('x SSDLite-MobileNetV2', 'mmdet SSDLite-MobileNetV2')
                ] if peer and name.startswith('ssdlite') else []
        model = TensorForward(init_model(cfg, fuse=False))
        rows += pair(osp.splitext(osp.basename(name))[0], evaluated(model),
                     refs)
    return rows + peer


# The layers whose export form benchmark.py can vary: the get_backend
# keyword that picks it, the layer type that has one, the row note.
FORM_KINDS = (('sfconv_form', FactorizedPointwise, 'SF-Conv as'),
              ('parc_form', ParCBlock, 'ParC mixer as'))


def with_export_forms(entries, choices):
    """``entries`` as ``(entry, forms)`` pairs, ``forms`` the get_backend
    keywords of its export forms. ``choices`` maps each keyword of
    :data:`FORM_KINDS` to a list of forms (``[None]``: the runtime's own);
    a row of a model holding the layer of a kind is repeated once per form
    of it (per combination, where it holds several kinds). With several
    forms a row is named ``'NAME (form)'`` and also timed against the
    first form's row."""
    rows = []
    for name, model, note, refs in entries:
        kinds = [(key, label) for key, layer, label in FORM_KINDS
                 if choices[key] != [None] and model is not None and any(
                     isinstance(m, layer) for m in model.modules())]
        combos = list(itertools.product(*(choices[key] for key, _ in kinds)))
        first = f'{name} ({", ".join(combos[0])})'
        for combo in combos:
            forms = {key: form for (key, _), form in zip(kinds, combo)}
            form_note = '; '.join(filter(None, (note, *(
                f'{label} {form}' for (_, label), form in zip(kinds, combo)
            ))))
            if len(combos) == 1:
                rows.append(((name, model, form_note, refs), forms))
                continue
            row = f'{name} ({", ".join(combo)})'
            ratio = [] if row == first else [
                (f'x {", ".join(combos[0])}', first)]
            rows.append(((row, model, form_note, list(refs) + ratio), forms))
    return rows


def runtime_rows(entries, shape, warmup, runs, runtime, threads,
                 sfconv_forms=(None, ), parc_forms=(None, )):
    """The fused rows of ``entries`` timed in a deploy runtime (a key of
    :data:`~mmfalcon.deployment.backends.BACKENDS`), interleaved: each
    model exported in fp32 for the fixed input ``shape`` as
    tools/deployment/export.py exports it, one loaded model per row, on
    ``threads`` threads. Params and FLOPs are the PyTorch model's; "MB
    moved" the bytes one inference of the float graph reads and writes
    layer by layer (:func:`~mmfalcon.analysis.onnx_traffic`). A model with
    fused SF-Conv pairs gets a row per form of ``sfconv_forms``, one with
    fused ParC blocks a row per form of ``parc_forms``
    (:func:`with_export_forms`). A model that does not export is
    unavailable, with the reason."""
    import tempfile
    get_backend(runtime).require()  # a missing package once, with pip
    # deployment runs fused models only (an unfused ParC-Net does not
    # export: its kernels are resized to the input inside the graph)
    rows = with_export_forms(
        [entry for entry in entries if not entry[0].endswith(' unfused')],
        dict(sfconv_form=list(sfconv_forms), parc_form=list(parc_forms)))
    loaded, notes, traffic = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, ((name, model, note, _), forms) in enumerate(rows):
            notes[name] = note
            if model is None:
                continue
            backend = get_backend(runtime, threads, **forms)
            out = osp.join(tmp, str(i))
            try:
                # the graph every backend converts, for its bytes
                export_module(model, shape, out + '.float.onnx',
                              sfconv_form=backend.sfconv_form,
                              parc_form=backend.parc_form)
                traffic[name] = onnx_traffic(out + '.float.onnx')['total']
                backend.export_module(model, shape, out)
                loaded[name] = backend.load(out)
            except Exception as exc:  # noqa: BLE001 - reported in the row
                notes[name] = (f'unavailable: {runtime} export failed '
                               f'({exc!r:.80})')
        times = latency_samples(loaded, shape, warmup, runs)
    entries = [entry for entry, _ in rows]
    suffix = f' @{shape[-1]}{RUNTIME_TAGS[runtime]}'
    table = timed_rows(entries, times, suffix, shape, notes)
    for (name, *_), row in zip(entries, table):
        if name in loaded:
            row.traffic_mb = traffic[name] / 1e6
    return table


def train_rows(size, batch, warmup, runs, compile_backend=None):
    """Training-step rows (forward + backward, train mode, batch ``batch``)
    of the unfused backbones and their peers, interleaved; FalconNet also
    with its branches run one by one instead of folded by batch
    statistics. With a ``compile_backend`` (``'inductor'``, torch.compile's
    default), FalconNet-base and ParC-Net-S also compiled by it (as
    ``compile=True`` in a config compiles them), their compile time (the
    first step) in the note."""
    from mmdet.models.backbones import MobileNetV2
    vit, vit_note = mobilevit_s()
    parc = f'ParC-Net-S os{32 if size <= 320 else 16}'
    vs_mnv2 = ('x MobileNetV2', 'mmdet MobileNetV2 (4, 7)')
    entries = [
        ('FalconNet-base', FalconNet(out_indices=(2, 3)), '', [vs_mnv2]),
        ('FalconNet-base, branches one by one',
         FalconNet(out_indices=(2, 3), fold_batch_stats=False),
         'fold_batch_stats=False', [vs_mnv2, ('x folded', 'FalconNet-base')]),
        (parc, ParCNet(arch='s', out_indices=(4, 5),
                       out_stride=32 if size <= 320 else 16), '',
         [vs_mnv2] + ([('x MobileViT-S', 'MobileViT-S')] if vit else [])),
        ('mmdet MobileNetV2 (4, 7)', MobileNetV2(out_indices=(4, 7)), '', []),
        ('MobileViT-S', vit, vit_note, []),
    ]
    shape = (batch, 3, size, size)
    if compile_backend:
        models = {name: model for name, model, _, _ in entries}
        for name in ('FalconNet-base', parc):
            compiled = torch.compile(copy.deepcopy(models[name]),
                                     backend=compile_backend)
            first = train_step_samples({name: compiled}, shape, 0, 1)[name]
            entries.append((
                f'{name}, torch.compile', compiled,
                f'{compile_backend}, compiled in {first[0] / 1e3:.0f} s',
                [('x eager', name), vs_mnv2]))
    available = {name: m for name, m, _, _ in entries if m is not None}
    times = train_step_samples(available, shape, warmup, runs)
    return timed_rows(entries, times, f' train @{size} x{batch}')


def runtime_description(runtime):
    """``'ONNX Runtime 1.23.2 (CPU provider, fp32)'``: name, version, how
    it runs (a key of :data:`RUNTIME_NAMES`)."""
    import importlib
    name, module, how = RUNTIME_NAMES[runtime]
    version = getattr(importlib.import_module(module), '__version__', '')
    return f'{name} {version} ({how})'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[320, 512])
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--no-models', action='store_true',
                        help='backbones only, not the configs\' models')
    parser.add_argument('--backend', choices=RUNTIMES, default='pytorch',
                        help='the runtime the fused models run in (each '
                        'exported in fp32 as export.py exports it)')
    parser.add_argument('--sfconv-forms', nargs='+', choices=SFCONV_FORMS,
                        default=[None], metavar='FORM',
                        help='with --backend: a row per export form of the '
                        f'fused SF-Conv pairs, of {", ".join(SFCONV_FORMS)} '
                        '(default: the runtime\'s own)')
    parser.add_argument('--parc-forms', nargs='+', choices=PARC_FORMS,
                        default=[None], metavar='FORM',
                        help='with --backend: a row per export form of the '
                        f'fused ParC token mixers, of {", ".join(PARC_FORMS)} '
                        '(default: the runtime\'s own)')
    parser.add_argument('--onnx', action='store_const', const='onnxruntime',
                        dest='backend', help='the same as --backend '
                        'onnxruntime')
    parser.add_argument('--train', action='store_true',
                        help='training steps (forward + backward) of the '
                        'backbones in PyTorch instead of inference')
    parser.add_argument('--compile', nargs='?', const='inductor',
                        metavar='BACKEND',
                        help='with --train: FalconNet-base and ParC-Net-S '
                        'also compiled by torch.compile with BACKEND '
                        '(default inductor)')
    parser.add_argument('--batch', type=int, default=8,
                        help='batch of --train (inference is batch 1)')
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args()
    if args.train and args.backend != 'pytorch':
        parser.error(f'--train runs in PyTorch; got --backend '
                     f'{args.backend}')
    for flag, forms in (('--sfconv-forms', args.sfconv_forms),
                        ('--parc-forms', args.parc_forms)):
        if forms != [None] and args.backend == 'pytorch':
            parser.error(f'{flag} are export forms: add --backend '
                         'onnxruntime|openvino|ncnn')
    if args.compile and not args.train:
        parser.error(f'--compile {args.compile} times training steps: add '
                     '--train')
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    table = []
    for size in args.sizes:
        if args.train:
            table += train_rows(size, args.batch, args.warmup, args.runs,
                                args.compile)
            continue
        shape = (1, 3, size, size)
        entries = backbones_at(size, ('matmul', 'conv')
                               if args.backend == 'pytorch' else (None, ))
        if not args.no_models:
            entries += models_at(size)
        if args.backend != 'pytorch':
            table += runtime_rows(entries, shape, args.warmup, args.runs,
                                  args.backend, threads, args.sfconv_forms,
                                  args.parc_forms)
            continue
        available = {name: m for name, m, _, _ in entries if m is not None}
        times = latency_samples(available, shape, args.warmup, args.runs)
        table += timed_rows(entries, times, f' @{size}', shape)
    print(f'CPU: {describe_cpu()}' + (
        '' if args.train or args.backend == 'pytorch' else
        f'; memory copy bandwidth {memory_bandwidth():.1f} GB/s'))
    if args.train:
        print(f'Training step (train mode, forward + backward of the sum of '
              f'the outputs\' means), batch {args.batch}, {threads} '
              f'threads, median of {args.runs} interleaved rounds after '
              f'{args.warmup} warm-up rounds; ratios are medians of '
              'per-round ratios.')
    else:
        print(f'{runtime_description(args.backend)}, batch 1, {threads} '
              f'threads, median of {args.runs} interleaved rounds after '
              f'{args.warmup} warm-up rounds; ratios are medians of '
              'per-round ratios.')
    print(format_table(table, markdown=args.markdown))


if __name__ == '__main__':
    main()
