"""Train a detector or segmentor (mmdet's / mmseg's train.py flags)."""
import argparse

from mmfalcon.engine.checkpoint import check_trainable, find_resume_checkpoint
from mmfalcon.engine.cli import (add_common_args, build_runner,
                                 check_data_paths, check_datasets,
                                 enable_amp, load_config, require_file, run)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    add_common_args(parser)
    parser.add_argument('--amp', action='store_true',
                        help='enable automatic mixed precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or from the latest one in the '
        'work dir when no path is given')
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_config(args)
    # a config asking for AmpOptimWrapper on a CPU machine goes through
    # enable_amp too, which makes it trainable there
    if args.amp or cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in (
                cfg.auto_scale_lr):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.'
                             'base_batch_size in the config.')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        # mmengine would trust work_dir/last_checkpoint even when a crash
        # cut that file off; None lets it start from scratch
        cfg.resume = True
        cfg.load_from = find_resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        require_file(args.resume, '--resume')
        cfg.resume, cfg.load_from = True, args.resume
    splits = ('train', 'val') if cfg.get('val_cfg') else ('train', )
    check_data_paths(cfg, splits)
    runner = build_runner(cfg)
    if cfg.get('load_from'):
        check_trainable(cfg.load_from, resume=cfg.get('resume', False),
                        model=runner.model)
    check_datasets(runner, splits)
    runner.train()


if __name__ == '__main__':
    run(main)
