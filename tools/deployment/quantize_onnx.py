"""Static INT8 quantization of a fused model in ONNX Runtime.

Exports the fused tensor forward (as export_onnx.py), calibrates the
activation ranges on images of the config's own test dataloader (its
pipeline and preprocessing) and writes a QDQ INT8 model. Reports the INT8 /
fp32 ONNX Runtime latency ratio; with --evaluate, both models' metrics on
the test set (the model's own post-processing and evaluator); with
--layers K, the K nodes that lose the most signal-to-noise ratio.

Usage: python tools/deployment/quantize_onnx.py CONFIG CHECKPOINT OUT.onnx
           [--shape H W] [--calib-images 32] [--method minmax]
           [--evaluate [--limit N]] [--layers K] [--runs 30]
"""
import argparse
import os.path as osp

import torch

from mmfalcon.analysis import latency_samples, ratio_spread
from mmfalcon.apis import init_model
from mmfalcon.deployment import (CALIBRATION_METHODS, OnnxRuntimeModule,
                                 calibration_inputs, check_onnx, evaluate,
                                 export_onnx, input_size_from_config,
                                 layer_errors, quantize_onnx)
from mmfalcon.engine.cli import (add_calib_images_argument,
                                 add_evaluate_arguments, add_shape_argument,
                                 print_test_metrics, require_file, run)
from mmfalcon.fileio import add_trust_argument


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='training or fused checkpoint')
    parser.add_argument('out', help='the INT8 .onnx file to write')
    parser.add_argument(
        '--fp32', help='where to write the float export (default: OUT with '
        '_fp32 before .onnx)')
    add_shape_argument(parser)
    add_calib_images_argument(
        parser, help='test images to calibrate on (default 32)')
    parser.add_argument('--method', choices=CALIBRATION_METHODS,
                        default='minmax',
                        help='activation range calibration (default minmax)')
    add_evaluate_arguments(parser,
                           help='evaluate fp32 and INT8 on the test set')
    parser.add_argument(
        '--layers', type=int, default=0, metavar='K',
        help='print the K nodes losing the most SQNR (on up to 4 '
        'calibration images)')
    parser.add_argument('--runs', type=int, default=30,
                        help='interleaved latency rounds (default 30)')
    parser.add_argument('--warmup', type=int, default=5)
    add_trust_argument(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    require_file(args.checkpoint, 'checkpoint')
    if args.runs < 1:
        raise SystemExit(f'--runs must be >= 1, got {args.runs}')
    model = init_model(args.config, args.checkpoint, fuse=True)
    shape = (1, 3) + (args.shape or input_size_from_config(model.cfg))
    fp32 = args.fp32 or osp.splitext(args.out)[0] + '_fp32.onnx'
    try:
        export_onnx(model, shape, fp32)
        err = check_onnx(model, fp32, shape)
        calib = calibration_inputs(model, shape, args.calib_images)
        quantize_onnx(fp32, args.out, calib, method=args.method)
    except ImportError as exc:
        raise SystemExit(str(exc))
    print(f'fp32 {fp32} (relative error vs PyTorch {err:.2g}); INT8 '
          f'{args.out}: {args.method} calibration on {len(calib)} test '
          f'images, input {list(shape)}')

    runtimes = dict(fp32=OnnxRuntimeModule(fp32),
                    int8=OnnxRuntimeModule(args.out))
    times = latency_samples(runtimes, shape, args.warmup, args.runs)
    mid, low, high = ratio_spread(times, 'int8', 'fp32')
    print(f'INT8 / fp32 latency in ONNX Runtime ({torch.get_num_threads()} '
          f'threads, {args.runs} interleaved rounds): median {mid:.2f} '
          f'(quartiles {low:.2f}-{high:.2f})')

    if args.evaluate:
        for name, runtime in runtimes.items():
            print_test_metrics(
                name, evaluate(model, runtime, shape, args.limit))

    if args.layers > 0:
        rows = layer_errors(fp32, args.out, calib[:4])
        worst = sorted(rows, key=lambda row: -row[3])[:args.layers]
        print(f'nodes losing the most SQNR (INT8 vs fp32, dB; lowest SQNR '
              f'{min(row[2] for row in rows):.1f} dB):')
        for node, op, sqnr, loss in worst:
            print(f'  {node} ({op}): -{loss:.1f} dB, output {sqnr:.1f} dB')


if __name__ == '__main__':
    run(main)
