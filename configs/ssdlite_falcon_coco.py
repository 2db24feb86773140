_base_ = [
    './_base_/models/ssdlite_falcon.py', './_base_/datasets/coco_ssdlite.py',
    './_base_/schedules/ssdlite_600e.py', './_base_/det_runtime.py'
]
