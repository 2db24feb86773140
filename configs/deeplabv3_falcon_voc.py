# DeepLabV3-FalconNet on PASCAL VOC 2012 + SBD aug, 512x512 crops: the light
# one, on DeepLabV3-ParC-Net's recipe (the mobile setting of the ParC-Net and
# MobileViT papers: output stride 16, ASPP 256 channels with rates 6/12/18,
# AdamW, head lr x10), so the two backbones compare on one head and
# schedule. mmseg's heavier recipe (os 8, ASPP 512): deeplabv3_falcon_os8_voc.py.
_base_ = './deeplabv3_parcnet_voc.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmfalcon.FalconNet',
        arch='base',
        out_indices=(2, 3),
        out_stride=16,
        norm_cfg={{_base_.norm_cfg}}),
    decode_head=dict(in_channels=256),
    auxiliary_head=dict(in_channels=128))
