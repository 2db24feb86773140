# The embedded demo: SSDLite-FalconNet trained on the generated shapes set
# (tools/misc/make_shapes_dataset.py) in a few CPU minutes. Inherits the
# COCO config and changes only data, model size and schedule.
_base_ = '../ssdlite_falcon_coco.py'

data_root = 'data/shapes_coco/'
metainfo = dict(
    classes=('circle', 'rectangle', 'triangle'),
    palette=[(220, 20, 60), (0, 128, 255), (0, 200, 0)])
widths = (16, 32, 64, 128)  # FalconNet 'tiny', this project's CPU variant

model = dict(
    backbone=dict(arch='tiny'),
    neck=dict(
        in_channels=widths[2:],
        out_channels=(64, 128, 128, 64, 64, 64)),
    bbox_head=dict(in_channels=(64, 128, 128, 64, 64, 64), num_classes=3))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion', brightness_delta=16,
         contrast_range=(0.8, 1.2), saturation_range=(0.8, 1.2),
         hue_delta=8),
    dict(type='Resize', scale=(320, 320), keep_ratio=False),
    dict(type='PackDetInputs')
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        _delete_=True,
        type='CocoDataset',
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
         end=100),
    dict(type='CosineAnnealingLR', begin=0, T_max=max_epochs,
         end=max_epochs, by_epoch=True, eta_min=1e-5)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=3e-3, weight_decay=0.02),
    paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=10, max_keep_ckpts=1, save_best=None))
auto_scale_lr = dict(enable=False)
