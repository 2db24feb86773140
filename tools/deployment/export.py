"""Export a fused detector / segmentor to a deploy runtime and check it there.

Backends: onnxruntime (OUT.onnx; fp32, int8), openvino (OUT.xml + OUT.bin;
fp32, fp16, bf16, int8) and ncnn (OUT.param + OUT.bin; fp32, fp16). OUT is
a path prefix (work_dir/end2end) or the backend's model file. The graph is
the tensor forward for one fixed input shape, as export_onnx.py writes it;
INT8 calibrates on the config's own test images. The written files are
loaded in the runtime and compared with the fused PyTorch model on a random
input, relative to each output's scale: fp32 must hold --tolerance (exit
non-zero otherwise); a reduced precision's error is printed.

Usage: python tools/deployment/export.py CONFIG CHECKPOINT OUT
           --backend onnxruntime|openvino|ncnn [--shape H W]
           [--precision fp32|fp16|bf16|int8] [--tolerance T]
           [--calib-images 32] [--latency RUNS] [--evaluate [--limit N]]
           [--threads N]
"""
import argparse
import os.path as osp
import statistics
import tempfile

import torch

from mmfalcon.analysis import latency_samples, ratio_spread
from mmfalcon.apis import init_model
from mmfalcon.deployment import evaluate, input_size_from_config
from mmfalcon.deployment.backends import (BACKENDS, PRECISIONS,
                                          UnsupportedOpError,
                                          export_and_check, get_backend)
from mmfalcon.deployment.input_shape import InputShapeError
from mmfalcon.engine.cli import (add_calib_images_argument,
                                 add_evaluate_arguments, add_shape_argument,
                                 print_test_metrics, require_file, run)
from mmfalcon.fileio import add_trust_argument

FP32_TOLERANCE = 1e-4


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='training or fused checkpoint')
    parser.add_argument(
        'out', help='output path prefix (e.g. work_dir/end2end) or the '
        "backend's model file (.onnx, .xml, .param)")
    parser.add_argument('--backend', required=True, choices=tuple(BACKENDS))
    add_shape_argument(parser)
    parser.add_argument(
        '--precision', choices=PRECISIONS, default='fp32',
        help='fp32 (default), or a reduced precision the backend supports: '
        + '; '.join(f'{name} {", ".join(cls.precisions)}'
                    for name, cls in BACKENDS.items()))
    parser.add_argument(
        '--tolerance', type=float,
        help='largest accepted error of the runtime vs PyTorch, relative to '
        "each output's scale: max |runtime - torch| / max |torch| (default "
        f'{FP32_TOLERANCE:g} for fp32; none for a reduced precision, whose '
        'error is printed)')
    add_calib_images_argument(
        parser, help='test images INT8 calibrates on (default 32)')
    parser.add_argument(
        '--latency', type=int, default=0, metavar='RUNS',
        help="also measure latency in RUNS interleaved rounds: the backend's "
        'fp32 export and this one')
    parser.add_argument('--warmup', type=int, default=5,
                        help='warm-up rounds of --latency (default 5)')
    parser.add_argument(
        '--threads', type=int,
        help="threads the runtime runs on (default: PyTorch's, "
        f'{torch.get_num_threads()} here)')
    add_evaluate_arguments(
        parser, help="evaluate this export (and the backend's fp32 export) "
        "on the test set with the model's own post-processing")
    add_trust_argument(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f'--threads must be >= 1, got {args.threads}')
    backend = get_backend(args.backend, args.threads)
    if args.latency < 0:
        raise SystemExit(f'--latency must be >= 0, got {args.latency}')
    try:  # what the command line asks for, before the model is built
        backend.check_precision(args.precision)
        backend.files(args.out)
        backend.require(args.precision)
    except (ValueError, ImportError) as exc:
        raise SystemExit(str(exc))
    require_file(args.checkpoint, 'checkpoint')
    model = init_model(args.config, args.checkpoint, fuse=True)
    shape = (1, 3) + (args.shape or input_size_from_config(model.cfg))
    try:
        result = export_and_check(model, backend, args.out, shape,
                                  args.precision, args.calib_images)
    except (InputShapeError, UnsupportedOpError) as exc:
        raise SystemExit(str(exc))
    runtime = f'{args.backend} {args.precision}'
    print(f'Exported {" + ".join(result["files"])} ({runtime}), input '
          f'{list(shape)}' + (f', calibrated on {result["calibrated"]} test '
                              f'images' if result['calibrated'] else ''))
    tolerance = args.tolerance
    if tolerance is None and args.precision == 'fp32':
        tolerance = FP32_TOLERANCE
    print(f'relative error {runtime} vs PyTorch fp32: {result["error"]:.3g} '
          + (f'(tolerance {tolerance:g})' if tolerance is not None else
             f'({args.precision} is a reduced precision: no tolerance)'))
    if tolerance is not None and not result['error'] <= tolerance:
        raise SystemExit(f'{runtime} check failed: relative error '
                         f'{result["error"]:.3g} > tolerance {tolerance:g}')

    runtimes = {runtime: result['runtime']}
    with tempfile.TemporaryDirectory() as tmp:
        if args.precision != 'fp32' and (args.latency or args.evaluate):
            fp32 = osp.join(tmp, 'fp32')
            backend.export(model, shape, fp32)
            runtimes = {f'{args.backend} fp32': backend.load(fp32), **runtimes}
        if args.latency:
            report_latency(runtimes, shape, args.warmup, args.latency,
                           args.threads or torch.get_num_threads())
        if args.evaluate:
            for name, module in runtimes.items():
                print_test_metrics(
                    name, evaluate(model, module, shape, args.limit))


def report_latency(runtimes, shape, warmup, runs, threads):
    """Print each runtime's median latency and its ratio to the first
    one, run interleaved. PyTorch is left out: a runtime's idle worker
    threads would slow it down.

    Args:
        runtimes (dict): Name -> loaded model; the first is the reference.
        shape (Sequence[int]): Their input shape.
        warmup (int): Untimed rounds first.
        runs (int): Timed rounds.
        threads (int): The threads they run on (for the report).
    """
    times = latency_samples(runtimes, shape, warmup, runs)
    reference = list(runtimes)[0]
    print(f'latency, {threads} threads, {runs} interleaved rounds (median '
          f'ms; median per-round ratio to {reference}, quartiles):')
    for name in runtimes:
        mid, low, high = ratio_spread(times, name, reference)
        print(f'  {name}: {statistics.median(times[name]):.2f} ms, '
              f'{mid:.2f} ({low:.2f}-{high:.2f})')


if __name__ == '__main__':
    run(main)
