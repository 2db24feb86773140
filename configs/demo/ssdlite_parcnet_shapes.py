# The embedded demo's ParC-Net variant: the FalconNet demo (same data and
# schedule) with a narrow ParC-Net (this project's CPU-sized custom arch,
# not an official one) in place of FalconNet-tiny.
_base_ = './ssdlite_falcon_shapes.py'

channels = (64, 96, 128, 64, 64, 64)
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmfalcon.ParCNet',
        arch=dict(
            stem_channels=16,
            mv2_layers=[[16, 1, 1], [24, 1, 2]],
            parc_layers=[[48, 48, 96, 1, 32], [64, 64, 128, 1, 16],
                         [96, 96, 192, 1, 8]],
            fusion='add',
            head_channels=192),
        out_indices=(4, 5),
        norm_cfg={{_base_.norm_cfg}}),
    neck=dict(in_channels=channels[:2], out_channels=channels),
    bbox_head=dict(in_channels=channels))
