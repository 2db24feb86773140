"""Test a detector or segmentor with fused (re-parameterized) weights.

Accepts a training checkpoint (fused after loading) or a fused one written
by tools/fuse.py (the model is fused before loading).
"""
import argparse

from mmengine.logging import print_log

from mmfalcon.engine.cli import (add_common_args, build_runner,
                                 check_data_paths, check_datasets,
                                 load_config, require_file, run)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test a model with fused weights')
    add_common_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump the predictions to this .pkl')
    parser.add_argument('--show-dir',
                        help='save images with predictions drawn here')
    parser.add_argument('--no-fuse', action='store_true',
                        help='test the unfused training-time model')
    return parser.parse_args()


def main():
    args = parse_args()
    require_file(args.checkpoint, 'checkpoint')
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if not args.no_fuse:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='mmfalcon.FuseHook')
        ]
    else:
        print_log('--no-fuse: testing the unfused model.', logger='current')
    if args.show_dir:
        vis = cfg.default_hooks.get('visualization')
        if vis is None:
            raise ValueError('--show-dir needs a visualization hook in '
                             'default_hooks.')
        vis.draw = True
        # mmdet's hook takes an output dir; mmseg's draws into the
        # visualizer's save dir.
        if vis.type == 'DetVisualizationHook':
            vis.test_out_dir = args.show_dir
        else:
            cfg.visualizer.save_dir = args.show_dir
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out {args.out}: expected a .pkl file')
        dump = dict(type='DumpResults', out_file_path=args.out)
        evaluators = cfg.test_evaluator
        cfg.test_evaluator = (list(evaluators) if isinstance(
            evaluators, (list, tuple)) else [evaluators]) + [dump]
    check_data_paths(cfg, ('test', ))
    runner = build_runner(cfg)
    check_datasets(runner, ('test', ))
    runner.test()


if __name__ == '__main__':
    run(main)
