"""A deterministic generator of small, non-trivial shape datasets.

Each image has a textured background (noise, a colour gradient and random
stripes) and 1-4 filled shapes (circle, rectangle, triangle) of varied size,
colour and position that overlap little. The same scenes are written as a
COCO detection set and as a VOC-layout segmentation set, so the embedded
demos of both tasks need nothing downloaded and nothing binary committed.
"""
import json
import os
import os.path as osp
from typing import List, Sequence

import cv2
import numpy as np

CLASSES = ('circle', 'rectangle', 'triangle')


def _background(rng, height, width):
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / max(height, width)
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    img = c0 + ramp[..., None] * (c1 - c0)
    period = rng.uniform(8, 40)
    stripes = np.sin((xs * np.sin(angle) - ys * np.cos(angle)) / period *
                     2 * np.pi)
    img += stripes[..., None] * rng.uniform(5, 25)
    img += rng.normal(0, rng.uniform(4, 14), size=img.shape)
    return img


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) *
             (b[3] - b[1]) - inter)
    return inter / union


def _draw_shape(rng, label, box, img, mask, value):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
    canvas = np.zeros(mask.shape, np.uint8)
    if label == 0:
        cv2.ellipse(canvas, (int(x0 + w / 2), int(y0 + h / 2)),
                    (int(w / 2), int(h / 2)), 0, 0, 360, 1, -1)
    elif label == 1:
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), 1, -1)
    else:
        apex = int(x0 + rng.uniform(0.2, 0.8) * w)
        pts = np.array([[apex, y0], [x0, y1 - 1], [x1 - 1, y1 - 1]])
        cv2.fillPoly(canvas, [pts.astype(np.int32)], 1)
    inside = canvas.astype(bool)
    img[inside] = np.asarray(colour) + rng.normal(0, 6, size=(inside.sum(),
                                                              3))
    mask[inside] = value
    ys, xs = np.nonzero(inside)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1,
            int(ys.max()) + 1]


def render_scene(rng, height, width, min_size=32, max_size=None):
    """Render one scene; return (BGR image, label mask, boxes, labels).

    Mask values are class index + 1 (0 = background); boxes are
    ``[x0, y0, x1, y1]`` tight around the drawn pixels.
    """
    max_size = max_size or int(min(height, width) * 0.6)
    img = _background(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            w = int(rng.uniform(min_size, max_size))
            h = int(np.clip(w * rng.uniform(0.6, 1.6), min_size, max_size))
            x0 = int(rng.integers(0, width - w))
            y0 = int(rng.integers(0, height - h))
            box = [x0, y0, x0 + w, y0 + h]
            if all(_iou(box, b) < 0.05 for b in boxes):
                break
        else:
            continue
        label = int(rng.integers(0, len(CLASSES)))
        boxes.append(_draw_shape(rng, label, box, img, mask, label + 1))
        labels.append(label)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, mask, boxes, labels


def _splits(num_train, num_val):
    return (('train', num_train), ('val', num_val))


def shapes_palette():
    """Palette of the segmentation set: background black, then one colour
    per class (as VOC's palette PNGs store it)."""
    return [(0, 0, 0), (220, 20, 60), (0, 128, 255), (0, 200, 0)]


def make_coco_shapes(root: str, num_train: int = 240, num_val: int = 60,
                     size: Sequence[int] = (320, 320), seed: int = 0) -> str:
    """Write a COCO-format detection set under ``root`` (idempotent).

    Layout: ``{train,val}/*.jpg`` and ``annotations/instances_{split}.json``.
    Returns ``root``.
    """
    done = osp.join(root, 'annotations', 'instances_val.json')
    if osp.isfile(done):
        return root
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)]
    for split, count in _splits(num_train, num_val):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images: List[dict] = []
        annotations: List[dict] = []
        for idx in range(count):
            img, _, boxes, labels = render_scene(rng, *size)
            name = f'{idx:05d}.jpg'
            cv2.imwrite(osp.join(root, split, name), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
            images.append(dict(id=idx, file_name=name, height=size[0],
                               width=size[1]))
            for (x0, y0, x1, y1), label in zip(boxes, labels):
                annotations.append(
                    dict(id=len(annotations) + 1, image_id=idx,
                         category_id=label + 1,
                         bbox=[x0, y0, x1 - x0, y1 - y0],
                         area=(x1 - x0) * (y1 - y0), iscrowd=0))
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(ann_file + '.tmp', 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
        os.replace(ann_file + '.tmp', ann_file)  # complete or absent
    return root


def make_voc_shapes(root: str, num_train: int = 240, num_val: int = 60,
                    size: Sequence[int] = (256, 256), seed: int = 0) -> str:
    """Write a VOC-layout segmentation set under ``root`` (idempotent).

    Layout: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs,
    value = class index, 0 = background) and
    ``ImageSets/Segmentation/{train,val}.txt``. Returns ``root``.
    """
    from PIL import Image

    split_dir = osp.join(root, 'ImageSets', 'Segmentation')
    if osp.isfile(osp.join(split_dir, 'val.txt')):
        return root
    rng = np.random.default_rng(seed)
    for folder in (osp.join(root, 'JPEGImages'),
                   osp.join(root, 'SegmentationClass'), split_dir):
        os.makedirs(folder, exist_ok=True)
    palette = [c for colour in shapes_palette() for c in colour]
    for split, count in _splits(num_train, num_val):
        names = []
        for idx in range(count):
            img, mask, _, _ = render_scene(rng, *size)
            name = f'{split}_{idx:05d}'
            cv2.imwrite(osp.join(root, 'JPEGImages', name + '.jpg'), img,
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
            png = Image.fromarray(mask, mode='P')
            png.putpalette(palette)
            png.save(osp.join(root, 'SegmentationClass', name + '.png'))
            names.append(name)
        list_file = osp.join(split_dir, f'{split}.txt')
        with open(list_file + '.tmp', 'w') as f:
            f.write('\n'.join(names) + '\n')
        os.replace(list_file + '.tmp', list_file)  # complete or absent
    return root
