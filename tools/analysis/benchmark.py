"""Params, FLOPs and median CPU latency of the backbones, side by side.

All models of one input size are timed in the same process, interleaved,
so the ratios are meaningful on a shared, noisy machine; absolute times are
not. Usage: python tools/analysis/benchmark.py [--runs 50] [--markdown]
"""
import argparse
import copy

import torch

import mmfalcon
from mmfalcon.analysis import (BenchmarkRow, count_flops, count_params,
                               format_table, measure_latency)
from mmfalcon.models import FalconNet


def falconnet_models():
    unfused = FalconNet(arch='base', out_indices=(2, 3)).eval()
    fused = mmfalcon.switch_to_deploy(copy.deepcopy(unfused))
    fused_conv = copy.deepcopy(fused)
    for module in fused_conv.modules():
        if hasattr(module, 'impl'):
            module.impl = 'conv'
    return {
        'FalconNet unfused': unfused,
        'FalconNet fused': fused,
        'FalconNet fused (SF-Conv as grouped conv + shuffle)': fused_conv,
    }


def mobilenetv2():
    from mmdet.models.backbones import MobileNetV2
    return MobileNetV2(out_indices=(4, 7)).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, default=320)
    parser.add_argument('--runs', type=int, default=50)
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (1, 3, args.size, args.size)
    models = falconnet_models()
    models['mmdet MobileNetV2 (4, 7)'] = mobilenetv2()
    latency = measure_latency(models, shape, args.warmup, args.runs)
    rows = {
        name: BenchmarkRow(name, count_params(model),
                           count_flops(model, shape), latency[name])
        for name, model in models.items()
    }
    base = latency['FalconNet unfused']
    mnv2 = latency['mmdet MobileNetV2 (4, 7)']
    for name, row in rows.items():
        row.ratios['x FalconNet unfused'] = row.latency_ms / base
        row.ratios['x MobileNetV2'] = row.latency_ms / mnv2
    print(f'Input {shape}, batch 1, {torch.get_num_threads()} threads, '
          f'median of {args.runs} interleaved runs after {args.warmup} '
          'warm-up runs.')
    print(format_table(list(rows.values()), markdown=args.markdown))


if __name__ == '__main__':
    main()
