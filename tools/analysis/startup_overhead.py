"""Time what tools/train.py adds to start-up on a COCO-sized dataset.

Writes, in a temporary folder that is removed afterwards, a generated
COCO 2017 layout of the config's size (by default train2017's 118,287
images and about 860k boxes, val2017's 5,000 images) with one empty file
per image, then times mmdet's own build of the config's train and val
datasets (the build the runner does) against the checks tools/train.py
adds (``check_data_paths`` before the runner, ``check_built_dataset`` on
the runner's datasets).

Usage: python tools/analysis/startup_overhead.py [--config C]
[--train-images N] [--val-images N] [--boxes-per-image B] [--seed S]
"""
import argparse
import json
import os
import os.path as osp
import tempfile
import time

import numpy as np
from mmdet.datasets import CocoDataset
from mmengine.config import Config
from mmengine.registry import DATASETS, init_default_scope

from mmfalcon.analysis import describe_cpu
from mmfalcon.engine.cli import check_built_dataset, check_data_paths

SPLITS = ('train', 'val')


def write_split(root, split, num_images, boxes_per_image, rng):
    """Write ``annotations/instances_{split}2017.json`` (COCO's 80 class
    names, Poisson-many boxes per image) and an empty file per image in
    ``{split}2017/`` under ``root``."""
    classes = CocoDataset.METAINFO['classes']
    sizes = rng.choice([(480, 640), (640, 480), (427, 640)], num_images)
    counts = rng.poisson(boxes_per_image, num_images)
    images, annotations = [], []
    folder = osp.join(root, f'{split}2017')
    os.makedirs(folder)
    for image_id, ((height, width), count) in enumerate(zip(sizes, counts)):
        name = f'{image_id:012d}.jpg'
        open(osp.join(folder, name), 'wb').close()
        images.append(dict(id=image_id, file_name=name, height=int(height),
                           width=int(width)))
        x0 = rng.uniform(0, width * 0.8, count)
        y0 = rng.uniform(0, height * 0.8, count)
        w = rng.uniform(4, width * 0.2, count)
        h = rng.uniform(4, height * 0.2, count)
        labels = rng.integers(1, len(classes) + 1, count)
        for box in zip(x0, y0, w, h, labels):
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id,
                category_id=int(box[4]), bbox=[round(float(v), 2)
                                               for v in box[:4]],
                area=round(float(box[2] * box[3]), 2), iscrowd=0))
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    with open(osp.join(root, 'annotations', f'instances_{split}2017.json'),
              'w') as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=[dict(id=i + 1, name=n)
                                   for i, n in enumerate(classes)]), f)
    return len(annotations)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=osp.join(
        osp.dirname(__file__), '..', '..', 'configs',
        'ssdlite_falcon_coco.py'), help='a config reading data/coco/')
    parser.add_argument('--train-images', type=int, default=118287)
    parser.add_argument('--val-images', type=int, default=5000)
    parser.add_argument('--boxes-per-image', type=float,
                        default=860001 / 118287)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.default_scope)
    rng = np.random.default_rng(args.seed)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        root = osp.join(work, 'data', 'coco')
        for split, count in zip(SPLITS, (args.train_images, args.val_images)):
            boxes = write_split(root, split, count, args.boxes_per_image, rng)
            print(f'{split}: {count} images, {boxes} boxes')
        os.chdir(work)  # the config's data_root data/coco/ is this one
        try:
            start = time.perf_counter()
            check_data_paths(cfg, SPLITS)
            added = time.perf_counter() - start
            build = 0.0
            for split in SPLITS:
                start = time.perf_counter()
                dataset = DATASETS.build(cfg[f'{split}_dataloader'].dataset)
                build += time.perf_counter() - start
                start = time.perf_counter()
                check_built_dataset(dataset, split)
                added += time.perf_counter() - start
                del dataset
        finally:
            os.chdir(cwd)
    print(f'CPU: {describe_cpu()}')
    print(f"mmdet's dataset build (train + val): {build:.2f} s")
    print(f'added by tools/train.py\'s checks: {added:.3f} s '
          f'({100 * added / build:.1f}% of the build)')


if __name__ == '__main__':
    main()
