"""Params, FLOPs and median CPU latency of the backbones, side by side.

All models of one input size are timed in the same process, interleaved,
so the ratios are meaningful on a shared, noisy machine; absolute times are
not. Usage: python tools/analysis/benchmark.py [--runs 30] [--markdown]
"""
import argparse
import copy

import torch

import mmfalcon
from mmfalcon.analysis import (BenchmarkRow, count_flops, count_params,
                               format_table, measure_latency)
from mmfalcon.models import FalconNet, ParCNet


def fused(model, sfconv_impl=None):
    model = mmfalcon.switch_to_deploy(copy.deepcopy(model)).eval()
    if sfconv_impl is not None:
        for module in model.modules():
            if hasattr(module, 'impl'):
                module.impl = sfconv_impl
    return model


def mobilevit_s():
    """MobileViT-S from mmpretrain, or the reason it is unavailable."""
    try:
        from mmpretrain.models.backbones import MobileViT
    except Exception as exc:  # noqa: BLE001 - any import failure
        return None, f'unavailable: mmpretrain import failed ({exc!r:.60})'
    return MobileViT(arch='small', out_indices=(3, 4)).eval(), ''


def models_at(size):
    """(name, model, note, [(ratio column, reference name)]) for a size."""
    parc = ParCNet(arch='s', out_indices=(4, 5)).eval()
    vit, vit_note = mobilevit_s()
    vs_vit = [('x MobileViT-S', 'MobileViT-S (4, 5)')] if vit else []
    entries = [
        ('ParC-Net-S unfused', parc, '', vs_vit),
        ('ParC-Net-S fused', fused(parc), '',
         [('x unfused', 'ParC-Net-S unfused')] + vs_vit),
        ('MobileViT-S (4, 5)', vit, vit_note, []),
    ]
    if size == 320:
        from mmdet.models.backbones import MobileNetV2
        falcon = FalconNet(arch='base', out_indices=(2, 3)).eval()
        vs_mnv2 = ('x MobileNetV2', 'mmdet MobileNetV2 (4, 7)')
        entries = [
            ('FalconNet unfused', falcon, '', [vs_mnv2]),
            ('FalconNet fused', fused(falcon, 'matmul'), 'SF-Conv as matmul',
             [('x unfused', 'FalconNet unfused'), vs_mnv2]),
            ('FalconNet fused (conv)', fused(falcon, 'conv'),
             'SF-Conv as grouped conv + shuffle',
             [('x unfused', 'FalconNet unfused'), vs_mnv2]),
            ('mmdet MobileNetV2 (4, 7)',
             MobileNetV2(out_indices=(4, 7)).eval(), '', []),
        ] + entries
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[320, 512])
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for size in args.sizes:
        shape = (1, 3, size, size)
        entries = models_at(size)
        available = {name: m for name, m, _, _ in entries if m is not None}
        latency = measure_latency(available, shape, args.warmup, args.runs)
        rows = []
        for name, model, note, ratios in entries:
            row = BenchmarkRow(name, note=note)
            if model is not None:
                row.params = count_params(model)
                row.flops = count_flops(model, shape)
                row.latency_ms = latency[name]
                for column, ref in ratios:
                    row.ratios[column] = latency[name] / latency[ref]
            rows.append(row)
        print(f'\nInput {shape}, batch 1, {torch.get_num_threads()} '
              f'threads, median of {args.runs} interleaved runs after '
              f'{args.warmup} warm-up runs:')
        print(format_table(rows, markdown=args.markdown))


if __name__ == '__main__':
    main()
