"""Run a fused detector / segmentor on one image and draw the prediction.

The task (detection or segmentation) comes from the config. Accepts a
training or a fused checkpoint.

Usage: python tools/demo/image_demo.py IMAGE CONFIG CHECKPOINT
           --out-file OUT.png [--score-thr 0.3]
"""
import argparse

from mmfalcon.apis import draw_result, inference
from mmfalcon.apis import init_model
from mmfalcon.engine.cli import require_file, run
from mmfalcon.fileio import add_trust_argument


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='training or fused checkpoint')
    parser.add_argument('--out-file', required=True,
                        help='where to write the drawing (e.g. out.png)')
    parser.add_argument(
        '--score-thr', type=float, default=0.3,
        help='do not draw detections below this score (detection only)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    add_trust_argument(parser)
    return parser.parse_args()


def main():
    args = parse_args()
    require_file(args.image, 'image')
    require_file(args.checkpoint, 'checkpoint')
    model = init_model(args.config, args.checkpoint, fuse=True,
                       device=args.device)
    result = inference(model, args.image)
    draw_result(model, args.image, result, out_file=args.out_file,
                score_thr=args.score_thr)
    print(f'Saved the drawing to {args.out_file}.')


if __name__ == '__main__':
    run(main)
