"""Export a fused detector / segmentor to ONNX and check it in onnxruntime.

The graph is the tensor forward (no preprocessing, no post-processing) for
one fixed input shape: a detector's class scores and box deltas per level,
a segmentor's logits. Exits non-zero when onnxruntime and PyTorch differ
by more than the tolerance, relative to each output's scale.

Usage: python tools/deployment/export_onnx.py CONFIG CHECKPOINT OUT.onnx
           [--shape H W] [--opset N] [--tolerance 1e-4]
"""
import argparse

from mmfalcon.deployment import (DEFAULT_OPSET, check_onnx, export_onnx,
                                 input_size_from_config)
from mmfalcon.apis import init_model
from mmfalcon.engine.cli import add_shape_argument, require_file, run
from mmfalcon.fileio import add_trust_argument


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='training or fused checkpoint')
    parser.add_argument('out', help='the .onnx file to write')
    add_shape_argument(parser)
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help=f'ONNX opset version (default {DEFAULT_OPSET})')
    parser.add_argument(
        '--tolerance', type=float, default=1e-4,
        help='largest accepted error of onnxruntime vs PyTorch, relative '
        "to each output's scale: max |onnx - torch| / max |torch| "
        '(default 1e-4)')
    add_trust_argument(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    require_file(args.checkpoint, 'checkpoint')
    model = init_model(args.config, args.checkpoint, fuse=True)
    shape = (1, 3) + (args.shape or input_size_from_config(model.cfg))
    try:
        names = export_onnx(model, shape, args.out, args.opset)
        err = check_onnx(model, args.out, shape)
    except ImportError as exc:
        raise SystemExit(str(exc))
    print(f'Exported {args.out}: input {names["input_names"][0]} '
          f'{list(shape)}, outputs {", ".join(names["output_names"])}')
    print(f'relative error onnxruntime vs PyTorch: {err:.3g} '
          f'(tolerance {args.tolerance:g})')
    if not err <= args.tolerance:  # also catches NaN
        raise SystemExit(f'ONNX check failed: relative error {err:.3g} > '
                         f'tolerance {args.tolerance:g}')


if __name__ == '__main__':
    run(main)
