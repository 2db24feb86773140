# SSDLite-320 on ParC-Net-S: layer4 (128 ch, stride 16) and layer5 (160 ch,
# stride 32) feed mmdet's SSDLite neck and depthwise head.
# Recipe: the official ParC-Net one (AdamW, weight decay 0.02, cosine
# 9e-4 -> 1e-6, 200 epochs, 128 images per step), not mmdet's SGD 600e:
# it is what the published 28.8 box mAP was trained with, and AdamW suits
# the ParC kernels and position embeddings. Augmentation is mmdet's SSDLite
# pipeline. No model-level pretrained weights: set
# model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...) with a
# checkpoint from tools/model_converters/parcnet_official.py.
_base_ = [
    './_base_/models/ssdlite_falcon.py', './_base_/datasets/coco_ssdlite.py',
    './_base_/schedules/adamw_cosine_200e.py', './_base_/det_runtime.py'
]
channels = (128, 160, 512, 256, 256, 128)
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmfalcon.ParCNet',
        arch='s',
        out_indices=(4, 5),
        norm_cfg={{_base_.norm_cfg}}),
    neck=dict(in_channels=channels[:2], out_channels=channels),
    bbox_head=dict(in_channels=channels))
train_dataloader = dict(batch_size=32, dataset=dict(times=1))
