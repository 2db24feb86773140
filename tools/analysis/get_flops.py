"""Parameters and FLOPs of a config's backbone and model, unfused and fused.

The model is built from the config with random weights (complexity does
not depend on them); the whole model is its tensor forward, without
preprocessing and post-processing. FLOPs: mmengine's FlopAnalyzer (one
multiply-add = one FLOP).

Usage: python tools/analysis/get_flops.py CONFIG [--shape H W] [--markdown]
"""
import argparse

from mmengine.config import Config, DictAction

from mmfalcon.analysis.benchmark import format_table
from mmfalcon.analysis.complexity import measure_complexity
from mmfalcon.deployment import input_size_from_config
from mmfalcon.apis import init_model
from mmfalcon.engine.cli import add_shape_argument


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    add_shape_argument(parser)
    parser.add_argument('--markdown', action='store_true',
                        help='print a Markdown table')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, key=value (xxx=yyy format)')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    model = init_model(cfg, None, fuse=False)
    shape = (1, 3) + (args.shape or input_size_from_config(cfg))
    rows = measure_complexity(model, shape)
    print(f'{args.config}, input {list(shape)}:')
    print(format_table(list(rows.values()), markdown=args.markdown,
                       drop_empty=True))


if __name__ == '__main__':
    main()
