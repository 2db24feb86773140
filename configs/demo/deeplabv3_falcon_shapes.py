# The embedded segmentation demo: DeepLabV3-FalconNet trained on the
# generated VOC-layout shapes set (tools/misc/make_shapes_dataset.py
# --format voc) in a few CPU minutes. Inherits the VOC config and changes
# only data, model size and schedule.
_base_ = '../deeplabv3_falcon_voc.py'

data_root = 'data/shapes_voc'
metainfo = dict(
    classes=('background', 'circle', 'rectangle', 'triangle'),
    palette=[(0, 0, 0), (220, 20, 60), (0, 128, 255), (0, 200, 0)])
size = (256, 256)

model = dict(
    data_preprocessor=dict(size=size),
    backbone=dict(arch='tiny'),  # this project's CPU variant
    decode_head=dict(in_channels=128, channels=64, dilations=(1, 4, 8, 12),
                     num_classes=4),
    auxiliary_head=dict(in_channels=64, channels=32, num_classes=4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion', brightness_delta=16,
         contrast_range=(0.8, 1.2), saturation_range=(0.8, 1.2),
         hue_delta=8),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
shapes = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'))
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        _delete_=True,
        ann_file='ImageSets/Segmentation/train.txt',
        pipeline=train_pipeline,
        **shapes))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        _delete_=True,
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=test_pipeline,
        **shapes))
test_dataloader = val_dataloader

max_iters = 320
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=3e-3, weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=50),
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=1e-5,
         by_epoch=False, begin=0, end=max_iters)
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
