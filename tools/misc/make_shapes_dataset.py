"""Generate the embedded demos' shape datasets (deterministic, idempotent).

Usage: python tools/misc/make_shapes_dataset.py [--format coco|voc] [--root R]
"""
import argparse

from mmfalcon.datasets import make_coco_shapes, make_voc_shapes

FORMATS = dict(
    coco=(make_coco_shapes, 'data/shapes_coco', (320, 320)),
    voc=(make_voc_shapes, 'data/shapes_voc', (256, 256)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--format', choices=sorted(FORMATS), default='coco',
                        help='coco: detection set; voc: segmentation set')
    parser.add_argument('--root', help='output folder (default per format)')
    parser.add_argument('--num-train', type=int, default=320)
    parser.add_argument('--num-val', type=int, default=80)
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='image size (default per format)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    make, root, size = FORMATS[args.format]
    root = make(args.root or root, args.num_train, args.num_val,
                args.size or size, args.seed)
    print(f'{args.format.upper()}-layout shapes dataset ready under {root}')


if __name__ == '__main__':
    main()
