"""Convert an official ParC-Net checkpoint to an mmfalcon ParCNet one.

Usage: python tools/model_converters/parcnet_official.py IN OUT [--arch s]
"""
import argparse
import os
import os.path as osp

import torch

from mmfalcon.converters.parcnet_official import (
    convert_official_parcnet, detect_parcnet_arch, drop_official_extras,
    unwrap_official_checkpoint)
from mmfalcon.engine.cli import run
from mmfalcon.fileio import add_trust_argument, load_checkpoint_file


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official checkpoint (hkzhang91/ParC-Net)')
    parser.add_argument('dst', help='output path')
    parser.add_argument(
        '--arch', choices=['s', 'xs'], default=None,
        help='expected arch; an error if the checkpoint is another one '
        '(default: detect it)')
    add_trust_argument(parser)
    args = parser.parse_args()
    if not osp.isfile(args.src):
        raise SystemExit(f'{args.src}: no such file')

    checkpoint = load_checkpoint_file(args.src, map_location='cpu')
    state_dict = unwrap_official_checkpoint(checkpoint)
    state_dict, dropped = drop_official_extras(state_dict)
    if dropped['residual']:
        print(f"Dropped {len(dropped['residual'])} 'residual.*' keys "
              '(verified copies of the last stage\'s first block).')
    if dropped['classifier']:
        print(f"Dropped the classifier: {', '.join(dropped['classifier'])}")
    arch = detect_parcnet_arch(state_dict)
    converted, unmapped = convert_official_parcnet(state_dict, args.arch)
    if unmapped:
        print(f'{len(unmapped)} keys could not be mapped and were left out:')
        for key in unmapped:
            print(f'  {key}')

    out_dir = osp.dirname(osp.abspath(args.dst))
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(
        source='github.com/hkzhang91/ParC-Net',
        source_checkpoint=osp.basename(args.src),  # no local paths
        arch=arch,
        dropped_keys=dropped['residual'] + dropped['classifier'],
        unmapped_keys=unmapped)
    torch.save(dict(state_dict=converted, meta=meta), args.dst)
    print(f'Saved {len(converted)} tensors (ParCNet arch {arch!r}) to '
          f'{args.dst}.')


if __name__ == '__main__':
    run(main)
