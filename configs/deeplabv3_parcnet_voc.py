# DeepLabV3-ParC-Net-S on PASCAL VOC 2012 + SBD aug, 512x512 crops.
# Recipe: the official ParC-Net one where it fits mmseg: output stride 16
# (layer5 not downsampled), ASPP 256 channels with rates 6/12/18, AdamW
# (weight decay 0.01), cosine 9e-4 -> 1e-6 with a 500-iteration warm-up,
# head learning rate x10, 50 epochs (16.5k iterations at 4 GPUs x 8
# images), random resize + 512 crop + flip. Not taken: the official extra
# COCO training data and mixed precision.
_base_ = [
    './_base_/models/deeplabv3_falcon.py', './_base_/datasets/voc12_aug.py',
    './_base_/seg_runtime.py'
]
max_iters = 16500
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmfalcon.ParCNet',
        arch='s',
        out_indices=(4, 5),
        # The official segmentation network: layer5 drops its downsampling
        # and adds no dilation (dilate_last=False), so this is the model
        # behind the published 79.7 mIoU and official ImageNet weights
        # start from the function they were trained as.
        out_stride=16,
        dilate_last=False,
        norm_cfg={{_base_.norm_cfg}}),
    decode_head=dict(in_channels=160, channels=256,
                     dilations=(1, 6, 12, 18)),
    auxiliary_head=dict(in_channels=128))
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=9e-4, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'decode_head': dict(lr_mult=10.),
        'auxiliary_head': dict(lr_mult=10.)
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=500),
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=1e-6,
         by_epoch=False, begin=0, end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
