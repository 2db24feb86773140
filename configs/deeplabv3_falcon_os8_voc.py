# DeepLabV3-FalconNet on PASCAL VOC 2012 + SBD aug, 512x512 crops, 21
# classes, on mmseg's DeepLabV3 VOC-aug recipe (SGD 0.01, poly, 20k
# iterations, 4 GPUs x 4 images, output stride 8, ASPP 512 channels with
# rates 12/24/36), as for its dilated MobileNetV2: 4-5x the FLOPs of the
# light deeplabv3_falcon_voc.py.
_base_ = [
    './_base_/models/deeplabv3_falcon.py', './_base_/datasets/voc12_aug.py',
    './_base_/schedules/seg_sgd_poly_20k.py', './_base_/seg_runtime.py'
]
