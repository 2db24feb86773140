"""Write a fused (re-parameterized) checkpoint of any mmfalcon model.

Usage: python tools/fuse.py CONFIG CHECKPOINT OUT
"""
import argparse
import os.path as osp

from mmfalcon.apis import init_model
from mmfalcon.engine import is_fused_checkpoint, save_fused_checkpoint
from mmfalcon.engine.cli import require_file, run
from mmfalcon.fileio import add_trust_argument


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='training checkpoint')
    parser.add_argument('out', help='path of the fused checkpoint')
    add_trust_argument(parser)
    args = parser.parse_args()
    require_file(args.checkpoint, 'checkpoint')
    if is_fused_checkpoint(args.checkpoint):
        raise SystemExit(f'{args.checkpoint} is already a fused checkpoint.')
    model = init_model(args.config, args.checkpoint, fuse=True)
    # file names only: a checkpoint travels, local paths would leak
    save_fused_checkpoint(
        model, args.out,
        meta=dict(config=osp.basename(args.config),
                  source_checkpoint=osp.basename(args.checkpoint),
                  dataset_meta=getattr(model, 'dataset_meta', None) or {}))
    print(f'Saved the fused checkpoint to {args.out}.\nTest it with:\n'
          f'  python tools/test.py {args.config} {args.out}')


if __name__ == '__main__':
    run(main)
