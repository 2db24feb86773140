"""Generate the embedded demo's shape dataset (deterministic, idempotent).

Usage: python tools/misc/make_shapes_dataset.py [--root data/shapes_coco]
"""
import argparse

from mmfalcon.datasets.synthetic_shapes import make_coco_shapes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', default='data/shapes_coco')
    parser.add_argument('--num-train', type=int, default=320)
    parser.add_argument('--num-val', type=int, default=80)
    parser.add_argument('--size', type=int, nargs=2, default=(320, 320),
                        metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    root = make_coco_shapes(args.root, args.num_train, args.num_val,
                            args.size, args.seed)
    print(f'COCO-format shapes dataset ready under {root}')


if __name__ == '__main__':
    main()
