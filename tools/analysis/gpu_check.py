"""Folded training checked and timed on one device (CUDA or the CPU).

Prints markdown tables, section by section:

* **exactness**: folded (``fold_batch_stats=True``) against branch-by-branch
  training of FalconNet-base and of single RepSO / RefCO layers, train
  mode, one step: outputs, input gradient, parameter gradients and running
  statistics. float64 must agree to 1e-10 (relative to each quantity's
  scale). float32, float16 and bfloat16 (the last two under
  ``torch.autocast``, as mmengine's AMP runs) cannot agree to more than
  their rounding, so each quantity's tolerance is derived from the branch
  form's own rounding error in that precision, ``e_b`` (its difference to
  the float64 branch step): folded and branches may differ by
  ``4 * e_b`` (e_b for the branches' error plus 3 e_b for the folded
  form's), never less than 16 units of roundoff of the precision
  (2^-24, 2^-11, 2^-8). A row passes when every quantity is within its
  tolerance and the BNs counted the same batches. float16 gradients are
  scaled down by powers of two until finite, as a loss scaler would.
* **training step**: median time of interleaved rounds (quartiles beside
  it; ``torch.cuda.synchronize`` ends each call on CUDA) and peak memory
  above what was allocated before the step (``torch.cuda.max_memory_
  allocated``; n/a on the CPU) of FalconNet-base folded and branch by
  branch against torchvision's MobileNetV2 (``features``), and ParC-Net-S
  against timm's MobileViT-S, forward and backward (under autocast on
  CUDA, as AMP trains).
* **inference**: fused FalconNet-base and ParC-Net-S against the same peers
  (their BNs folded into the convs by ``torch.fx`` where it traces them) at
  batch 1 and the training batch; float16 and channels_last on CUDA,
  float32 on the CPU.

Ratios are medians of per-round ratios (each round's pair ran back to
back), with quartiles; the H200 targets (folded FalconNet-base step <= 1.5x
MobileNetV2's, fused FalconNet-base inference at batch 64 <= 0.6x) are
printed beside them. A peer that does not import is reported
``unavailable`` with the reason, and its ratios are left out. The script
exits with status 1 when an exactness row fails or a model raises (its
row then shows the error), else 0.

Usage (from the repository root)::

    PYTHONPATH=. python tools/analysis/gpu_check.py [--device cuda|cpu]
        [--quick] [--sections exactness train inference] [--batch N]
        [--size S] [--runs R] [--warmup W] [--out report.md]

Defaults: batch 64 at 320x320, 20 rounds after 5 warm-up rounds, training
steps under float16 autocast on CUDA and in float32 on the CPU
(``--autocast`` sets it); ``--quick``: batch 2 at 64x64, 3 rounds after 1,
and FalconNet-tiny for the backbone's exactness (see
:func:`exactness_cases`). On one H200 the full run takes a few minutes.

What it needs: torch, and mmfalcon's backbones, which import mmengine and
mmcv's ``cnn`` bricks only (no compiled mmcv ops, no mmdet / mmseg: they
are optional). On a GPU machine with Python 3.12 and torch 2.11 and no
internet, carry wheels (``pip download --only-binary=:all:
--python-version 3.12 --platform manylinux2014_x86_64 -d wheels ...``) of:

* mmengine 0.10.7 (py3-none-any) and mmcv 2.1.0 built without ops
  (``MMCV_WITH_OPS=0 pip wheel --no-deps --no-build-isolation
  mmcv==2.1.0``: pure Python, for any torch; PyPI's ``mmcv-lite`` is the
  same package, but mmfalcon needs mmcv < 2.2);
* what they import: addict, yapf (with platformdirs), termcolor, rich,
  packaging, pyyaml, numpy, pillow, opencv-python;
* what they only declare, so that ``pip install --no-index --find-links
  wheels mmengine mmcv-*.whl`` resolves: matplotlib (with contourpy,
  cycler, fonttools, kiwisolver, pyparsing, python-dateutil, six),
  pygments, markdown-it-py, mdurl (or install the lot ``--no-deps``);
* for the peers, where the machine lacks them: torchvision of torch's
  build (0.26 for 2.11, the same CUDA tag) and timm (with
  huggingface_hub and safetensors, and their own dependencies).

Then ``pip install --no-index --find-links wheels mmengine mmcv`` and run
this script from the checkout with ``PYTHONPATH=.`` (no install of
mmfalcon needed).
"""
import argparse
import contextlib
import copy
import functools
import platform
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmfalcon.analysis import (describe_cpu, interleaved_times,
                               ratio_spread)
from mmfalcon.models import FalconNet, ParCNet, fuse_model
from mmfalcon.models.layers import RefCO, RepSO

# Unit roundoff of each precision (half a unit in the last place).
UNIT_ROUNDOFF = {
    torch.float32: 2.**-24,
    torch.float16: 2.**-11,
    torch.bfloat16: 2.**-8,
}
FLOAT64_TOLERANCE = 1e-10
# folded and branches may differ by the branches' rounding error plus three
# times as much for the folded form's
ROUNDING_ALLOWANCE = 4
ROUNDOFF_FLOOR = 16
# Output-gradient scales tried in turn until a backward is finite.
GRAD_SCALES = tuple(2.**-k for k in range(0, 25, 4))
QUANTITIES = ('output', 'input grad', 'param grads', 'running stats')
SECTIONS = ('exactness', 'train', 'inference')
AUTOCAST_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16,
                   'none': None}
# Targets on an H200, as ratios to MobileNetV2: the folded FalconNet-base
# training step, and fused FalconNet-base inference at batch 64.
TRAIN_TARGET = 1.5
INFERENCE_TARGET = 0.6


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and vector ISA."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return describe_cpu()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """``rows`` under ``header`` as a markdown table."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |'
              for row in rows]
    return '\n'.join(lines)


def randomize_affine(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN weights and biases, so the fold of each is tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.affine:
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen))
    return model


def outputs_of(out) -> Tuple[torch.Tensor, ...]:
    """A backbone's outputs as a tuple (one tensor or a tuple / list)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out, )


def exactness_cases(quick: bool):
    """``(name, build, input shape)``: ``build(fold_batch_stats=...)``
    makes the model; FalconNet-base at a small image size, its layers at
    the size of its first stage. ``quick`` checks FalconNet-tiny instead:
    on a 64x64 batch of 2 (its last BNs normalize 8 values) a random-init
    FalconNet-base amplifies rounding about 10^7-fold (measured on the
    CPU: float32 gradients off by their own size, float64 ones by 2e-10),
    FalconNet-tiny about 10^3-fold (float32 gradients within 4e-5); on 8
    images FalconNet-base's float32 gradients are within 1e-3 at 64x64,
    and the default checks 128x128."""
    batch, size = (2, 64) if quick else (8, 128)
    layer = size // 4
    arch = 'tiny' if quick else 'base'
    return [
        (f'FalconNet-{arch}', functools.partial(FalconNet, arch,
                                                out_indices=(2, 3)),
         (batch, 3, size, size)),
        ('RepSO 96 ch', functools.partial(RepSO, 96),
         (batch, 96, layer, layer)),
        ('RepSO 96 ch, dilation 2', functools.partial(RepSO, 96, dilation=2),
         (batch, 96, layer, layer)),
        ('RefCO 64 -> 256', functools.partial(RefCO, 64, 256),
         (batch, 64, layer, layer)),
        ('RefCO 256 -> 64', functools.partial(RefCO, 256, 64),
         (batch, 256, layer, layer)),
    ]


def training_step_result(model: nn.Module, x: torch.Tensor,
                         autocast_dtype: Optional[torch.dtype],
                         grad_scale: float = 1., grad_seed: int = 1) -> dict:
    """One train-mode forward and backward of ``model`` on ``x`` (under
    autocast in ``autocast_dtype`` unless None) with random output
    gradients drawn in float64 from ``grad_seed``, times ``grad_scale``,
    then cast to ``x``'s dtype (the same gradients in every precision):
    the outputs, input and parameter gradients (divided by ``grad_scale``
    again) and running statistics, all in float64 on the CPU, the batch
    counters, and whether every gradient is finite."""
    x = x.detach().clone().requires_grad_()
    model.train()
    context = (torch.autocast(x.device.type, dtype=autocast_dtype)
               if autocast_dtype is not None else contextlib.nullcontext())
    with context:
        outs = outputs_of(model(x))
    gen = torch.Generator().manual_seed(grad_seed)
    grads = [torch.randn(out.shape, generator=gen, dtype=torch.float64).to(
        x.device, x.dtype) for out in outs]
    sum((out.to(x.dtype) * grad * grad_scale).sum()
        for out, grad in zip(outs, grads)).backward()

    def cpu64(tensors, scale=1.):
        return [t.detach().double().cpu() / scale for t in tensors]

    buffers = dict(model.named_buffers())
    input_grad = cpu64([x.grad], grad_scale)
    param_grads = cpu64((p.grad for p in model.parameters()
                         if p.grad is not None), grad_scale)
    return dict(
        output=cpu64(outs), input_grad=input_grad, param_grads=param_grads,
        finite=all(t.isfinite().all() for t in input_grad + param_grads),
        running_stats=cpu64(buf for name, buf in buffers.items()
                            if name.split('.')[-1].startswith('running_')),
        counters=[int(buf) for name, buf in buffers.items()
                  if name.endswith('num_batches_tracked')])


def deviations(result: dict, ref: dict) -> Dict[str, float]:
    """Per quantity, the largest difference of ``result`` to ``ref``
    relative to the scale of ``ref``: per tensor for outputs and running
    statistics, over all parameters together for their gradients (a
    parameter whose gradient is tiny is measured against the others')."""

    def per_tensor(a, b):
        return max(((x - y).abs().max() / y.abs().max().clamp(min=1e-300)
                    ).item() for x, y in zip(a, b))

    def together(a, b):
        scale = max(y.abs().max() for y in b).clamp(min=1e-300)
        return max((x - y).abs().max() for x, y in zip(a, b)).item() / (
            scale.item())

    if len(result['param_grads']) != len(ref['param_grads']):
        raise RuntimeError('folded and branch-by-branch models have '
                           'gradients for different parameters')
    return {
        'output': per_tensor(result['output'], ref['output']),
        'input grad': per_tensor(result['input_grad'], ref['input_grad']),
        'param grads': together(result['param_grads'], ref['param_grads']),
        'running stats': per_tensor(result['running_stats'],
                                    ref['running_stats']),
    }


def exactness_rows(device: torch.device, cases: Sequence[tuple]
                   ) -> Tuple[List[list], bool]:
    """The exactness table's rows and whether all passed.

    Args:
        device (torch.device): Where the steps run.
        cases (Sequence[tuple]): ``(name, build, input shape)`` as
            :func:`exactness_cases` gives them.
    """
    rows, passed = [], True
    dtypes = [('float32', torch.float32, None),
              ('AMP float16', torch.float32, torch.float16),
              ('AMP bfloat16', torch.float32, torch.bfloat16)]
    for name, build, shape in cases:
        torch.manual_seed(0)
        branches = randomize_affine(build(fold_batch_stats=False))
        folded = build(fold_batch_stats=True)
        folded.load_state_dict(branches.state_dict(), strict=True)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64) + 0.5

        def step(model, dtype, autocast_dtype):
            # float16 gradients overflow where float32's exceed 65504: as a
            # loss scaler does, scale them down until they are finite
            for grad_scale in GRAD_SCALES:
                result = training_step_result(
                    copy.deepcopy(model).to(device=device, dtype=dtype),
                    x.to(device, dtype), autocast_dtype, grad_scale)
                if result['finite']:
                    break
            return result

        ref = step(branches, torch.float64, None)
        folded64 = step(folded, torch.float64, None)
        diffs = deviations(folded64, ref)
        tols = dict.fromkeys(QUANTITIES, FLOAT64_TOLERANCE)
        rows.append(_exactness_row(name, 'float64', diffs, tols,
                                   folded64['counters'] == ref['counters']))
        passed &= rows[-1][-1] == 'PASS'
        for label, dtype, autocast_dtype in dtypes:
            low_branches = step(branches, dtype, autocast_dtype)
            low_folded = step(folded, dtype, autocast_dtype)
            floor = ROUNDOFF_FLOOR * UNIT_ROUNDOFF[autocast_dtype or dtype]
            own = deviations(low_branches, ref)
            tols = {q: max(ROUNDING_ALLOWANCE * own[q], floor)
                    for q in QUANTITIES}
            diffs = deviations(low_folded, low_branches)
            rows.append(_exactness_row(
                name, label, diffs, tols,
                low_folded['counters'] == low_branches['counters']))
            passed &= rows[-1][-1] == 'PASS'
    return rows, passed


def _exactness_row(name, label, diffs, tols, counters_equal):
    cells = [f'{diffs[q]:.1e} <= {tols[q]:.1e}' if diffs[q] <= tols[q]
             else f'**{diffs[q]:.1e} > {tols[q]:.1e}**' for q in QUANTITIES]
    ok = counters_equal and all(diffs[q] <= tols[q] for q in QUANTITIES)
    return [name, label] + cells + [
        'equal' if counters_equal else '**differ**', 'PASS' if ok else
        'FAIL']


def torchvision_mobilenet_v2():
    """torchvision's MobileNetV2 ``features`` and a note, or None and why
    it is unavailable."""
    try:
        import torchvision
        model = torchvision.models.mobilenet_v2(weights=None).features
    except Exception as exc:  # noqa: BLE001 - any import or build failure
        return None, f'unavailable: torchvision ({exc!r:.80})'
    return model, f'torchvision {torchvision.__version__} features'


def timm_mobilevit_s():
    """timm's MobileViT-S, its stride-16 and stride-32 features (as
    ParC-Net-S returns them), and a note, or None and why it is
    unavailable."""
    try:
        import timm
        probe = timm.create_model('mobilevit_s', pretrained=False,
                                  features_only=True)
        reductions = list(probe.feature_info.reduction())
        indices = (reductions.index(16), reductions.index(32))
        model = timm.create_model('mobilevit_s', pretrained=False,
                                  features_only=True, out_indices=indices)
    except Exception as exc:  # noqa: BLE001 - any import or build failure
        return None, f'unavailable: timm ({exc!r:.80})'
    return model, f'timm {timm.__version__}, features {indices}'


def timed(call: Callable[[], object], device: torch.device):
    """``call`` followed by a device synchronization on CUDA, so that a
    timer around it measures the work, not the launch."""
    if device.type != 'cuda':
        return call

    def synced():
        call()
        torch.cuda.synchronize(device)

    return synced


def peak_memory_mib(call: Callable[[], object], device: torch.device,
                    before: Callable[[], object] = lambda: None) -> str:
    """Peak memory of one ``call`` above what was allocated before it (after
    ``before``), in MiB; 'n/a' on the CPU."""
    if device.type != 'cuda':
        return 'n/a'
    before()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    resident = torch.cuda.memory_allocated(device)
    call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - resident
    return f'{peak / 2**20:.0f}'


def runnable(calls: Dict[str, Callable[[], object]]
             ) -> Tuple[Dict[str, Callable[[], object]], Dict[str, str]]:
    """The calls that run once without an error, and the errors of the
    others by name (one model failing leaves the others' rows)."""
    ok, errors = {}, {}
    for name, call in calls.items():
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - reported in the row
            errors[name] = f'**error: {exc!r:.100}**'
        else:
            ok[name] = call
    return ok, errors


def _spread(times, name):
    low, mid, high = statistics.quantiles(times[name], n=4) if len(
        times[name]) > 1 else (times[name][0], ) * 3
    return f'{mid:.2f}', f'{low:.2f}-{high:.2f}'


def _ratio_cells(times, name, ratios):
    cells, targets = [], []
    for label, ref, target in ratios:
        if ref not in times:
            continue
        mid, low, high = ratio_spread(times, name, ref)
        cells.append(f'{label} {mid:.2f} ({low:.2f}-{high:.2f})')
        if target is not None:
            targets.append(f'<= {target} x {ref}: '
                           f'{"met" if mid <= target else "not met"}')
    return '; '.join(cells) or '-', '; '.join(targets) or '-'


def timing_rows(entries, times, memory, errors):
    """Rows ``model | median ms | quartiles | peak MiB | ratios | target
    (H200) | note`` of ``entries`` ``(name, model, note, [(label,
    reference, target)])`` from their interleaved ``times``, ``memory``
    and ``errors`` by name."""
    rows = []
    for name, model, note, ratios in entries:
        if name not in times:
            rows.append([name, '-', '-', '-', '-', '-',
                         errors.get(name, note)])
            continue
        median, quartiles = _spread(times, name)
        ratio, target = _ratio_cells(times, name, ratios)
        rows.append([name, median, quartiles, memory.get(name, 'n/a'), ratio,
                     target, note])
    return rows


def train_entries():
    """The training-step models: ``(name, model or None, note, ratios)``."""
    mobilenet, mobilenet_note = torchvision_mobilenet_v2()
    vit, vit_note = timm_mobilevit_s()
    mnv2 = 'MobileNetV2'
    return [
        ('FalconNet-base, folded', FalconNet(out_indices=(2, 3)),
         'fold_batch_stats=True (default)',
         [('x', mnv2, TRAIN_TARGET)]),
        ('FalconNet-base, branch by branch',
         FalconNet(out_indices=(2, 3), fold_batch_stats=False),
         'fold_batch_stats=False',
         [('x', mnv2, None), ('x folded', 'FalconNet-base, folded', None)]),
        (mnv2, mobilenet, mobilenet_note, []),
        ('ParC-Net-S', ParCNet(arch='s', out_indices=(4, 5)), 'os32',
         [('x', 'MobileViT-S', None)]),
        ('MobileViT-S', vit, vit_note, []),
    ]


def train_rows(device, batch, size, runs, warmup, autocast_dtype):
    """The training-step table's rows and the errors of models that did
    not run, by name."""
    entries = train_entries()
    models = {name: model.to(device).train()
              for name, model, _, _ in entries if model is not None}
    x = torch.randn(batch, 3, size, size, device=device)

    def step(model):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            loss = sum(out.float().mean() for out in outputs_of(model(x)))
        loss.backward()

    calls, errors = runnable({
        name: timed(functools.partial(step, model), device)
        for name, model in models.items()})
    times = interleaved_times(calls, warmup, runs)
    memory = {}
    for name in calls:
        model = models[name]
        memory[name] = peak_memory_mib(
            functools.partial(step, model), device,
            before=functools.partial(model.zero_grad, set_to_none=True))
        model.zero_grad(set_to_none=True)
    return timing_rows(entries, times, memory, errors), errors


def fold_peer_norms(model: nn.Module) -> Tuple[nn.Module, str]:
    """An eval-mode peer with its Conv+BN pairs folded by ``torch.fx``
    (as the fused mmfalcon backbones have theirs), and a note; the model
    unchanged where fx cannot trace it."""
    from torch.fx.experimental.optimization import fuse

    def count(m):
        return sum(isinstance(b, nn.modules.batchnorm._BatchNorm)
                   for b in m.modules())

    before = count(model)
    try:
        folded = fuse(model.eval())
    except Exception as exc:  # noqa: BLE001 - reported in the note
        return model, f'BNs not folded (torch.fx: {exc!r:.60})'
    return folded, f'{before - count(folded)} of {before} BNs folded (fx)'


def inference_rows(device, batches, size, runs, warmup):
    """The inference table's rows (fused backbones and peers, eval mode,
    no autograd, at each batch in ``batches``) and the errors of models
    that did not run, by name and batch."""
    half = device.type == 'cuda'
    dtype = torch.float16 if half else torch.float32
    layout = torch.channels_last if half else torch.contiguous_format
    entries = []
    for name, model, note, _ in train_entries():
        if name.endswith('branch by branch'):
            continue
        name = name.replace(', folded', '')
        if model is None:
            entries.append((name, None, note))
            continue
        if name in ('FalconNet-base', 'ParC-Net-S'):
            model, note = fuse_model(model.eval()), 'fused'
        else:
            model, fold_note = fold_peer_norms(model)
            note = f'{note}; {fold_note}'
        entries.append((name, model.to(device, dtype, memory_format=layout)
                        .eval(), note))
    ratios = {'FalconNet-base': ('MobileNetV2', INFERENCE_TARGET),
              'ParC-Net-S': ('MobileViT-S', None)}
    rows, all_errors = [], {}
    for batch in batches:
        x = torch.randn(batch, 3, size, size, device=device,
                        dtype=dtype).to(memory_format=layout)
        with torch.inference_mode():
            calls, errors = runnable({
                name: timed(functools.partial(model, x), device)
                for name, model, _ in entries if model is not None})
            times = interleaved_times(calls, warmup, runs)
            memory = {name: peak_memory_mib(call, device)
                      for name, call in calls.items()}
        for name, model, note in entries:
            ref, target = ratios.get(name, (None, None))
            # the H200 target is stated at batch 64 only
            target = target if batch == 64 else None
            rows += [[f'{row[0]} @ batch {batch}'] + row[1:]
                     for row in timing_rows(
                         [(name, model, note,
                           [('x', ref, target)] if ref else [])],
                         times, memory, errors)]
        all_errors.update({f'{name} @ batch {batch}': error
                           for name, error in errors.items()})
    return rows, all_errors


def precision_name(autocast_dtype: Optional[torch.dtype]) -> str:
    """How the timed training steps run, in words."""
    if autocast_dtype is None:
        return 'float32'
    return f'under autocast {str(autocast_dtype).split(".")[-1]}'


def header(device, args, autocast_dtype) -> str:
    lines = [f'# gpu_check on {device_name(device)} ({device.type})', '',
             f'torch {torch.__version__}, Python {platform.python_version()}']
    if device.type == 'cuda':
        lines[-1] += (
            f', CUDA {torch.version.cuda}, cuDNN '
            f'{torch.backends.cudnn.version()}, cudnn.benchmark '
            f'{torch.backends.cudnn.benchmark}, TF32 convs '
            f'{torch.backends.cudnn.allow_tf32}, TF32 matmul '
            f'{torch.backends.cuda.matmul.allow_tf32}')
    else:
        lines[-1] += f', {torch.get_num_threads()} threads'
    lines.append(f'Timing: batch {args.batch}, {args.size}x{args.size}, '
                 f'median of {args.runs} interleaved rounds after '
                 f'{args.warmup} warm-up rounds; training steps '
                 f'{precision_name(autocast_dtype)}.')
    return '\n'.join(lines)


# The smallest value of each sizing option.
MINIMUM = dict(batch=1, size=1, runs=3, warmup=0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    parser.add_argument('--quick', action='store_true',
                        help='small batch and size, few rounds (a smoke '
                        'test: batch 2, 64x64, 3 rounds)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS,
                        default=list(SECTIONS))
    parser.add_argument('--batch', type=int, default=None,
                        help='training and inference batch (default 64; '
                        '--quick: 2)')
    parser.add_argument('--size', type=int, default=None,
                        help='image side (default 320; --quick: 64)')
    parser.add_argument('--runs', type=int, default=None,
                        help='timed rounds (default 20; --quick: 3)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='warm-up rounds (default 5; --quick: 1)')
    parser.add_argument('--autocast', choices=tuple(AUTOCAST_DTYPES),
                        default=None,
                        help='precision of the timed training steps '
                        '(default float16 on CUDA, none on the CPU, whose '
                        'bfloat16 is emulated where it lacks AVX512-BF16)')
    parser.add_argument('--out', default=None,
                        help='also write the report to this file')
    args = parser.parse_args(argv)
    defaults = dict(batch=2, size=64, runs=3, warmup=1) if args.quick else (
        dict(batch=64, size=320, runs=20, warmup=5))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        elif getattr(args, key) < MINIMUM[key]:
            parser.error(f'--{key}={getattr(args, key)}: expected at least '
                         f'{MINIMUM[key]}' + (' (quartiles of fewer rounds '
                                              'extrapolate)' if key == 'runs'
                                              else ''))
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch.cuda.is_available() is False '
                     f'(torch {torch.__version__}); use --device cpu')
    return args


def main(argv=None) -> int:
    """Run the chosen sections, print (and with ``--out`` write) the
    report; returns 1 when an exactness row fails or a model raises, else
    0.

    Args:
        argv (list[str] | None): Command-line arguments; None reads
            ``sys.argv``.
    """
    args = parse_args(argv)
    device = torch.device(args.device)
    autocast_dtype = AUTOCAST_DTYPES[args.autocast or (
        'float16' if device.type == 'cuda' else 'none')]
    report = []

    def emit(text):
        report.append(text)
        print(text + '\n', flush=True)

    emit(header(device, args, autocast_dtype))
    passed = True
    if 'exactness' in args.sections:
        rows, passed = exactness_rows(device, exactness_cases(args.quick))
        emit('## Folded vs branch by branch, one training step\n\n'
             'Cells: relative difference <= tolerance (float64: 1e-10; '
             f'else max({ROUNDING_ALLOWANCE} x the branch form\'s own '
             f'error against float64, {ROUNDOFF_FLOOR} units of '
             'roundoff)).\n\n' + markdown_table(
                 ['case', 'precision', *QUANTITIES, 'batch counters',
                  'result'], rows))
    timing_header = ['model', 'median ms', 'quartiles ms', 'peak MiB',
                     'ratio (median, quartiles)', 'target (H200)', 'note']
    errors = {}
    if 'train' in args.sections:
        rows, train_errors = train_rows(device, args.batch, args.size,
                                        args.runs, args.warmup,
                                        autocast_dtype)
        emit(f'## Training step (forward + backward), batch {args.batch}, '
             f'{args.size}x{args.size}, '
             f'{precision_name(autocast_dtype)}\n\n' +
             markdown_table(timing_header, rows))
        errors.update(train_errors)
    if 'inference' in args.sections:
        batches = sorted({1, args.batch})
        rows, inference_errors = inference_rows(
            device, batches, args.size, args.runs, args.warmup)
        errors.update(inference_errors)
        form = ('float16, channels_last' if device.type == 'cuda' else
                'float32')
        emit(f'## Inference (eval, fused), {form}, {args.size}x{args.size}'
             '\n\n' + markdown_table(timing_header, rows))
    if 'exactness' in args.sections:
        emit('Exactness: ' + ('all rows PASS' if passed else
                              'FAIL (see the rows in bold)'))
    if errors:
        emit('Models that raised (their rows are empty): ' +
             ', '.join(sorted(errors)))
    if args.out:
        with open(args.out, 'w') as file:
            file.write('\n\n'.join(report) + '\n')
    return 0 if passed and not errors else 1


if __name__ == '__main__':
    sys.exit(main())
