# mmseg's VOC-aug schedule: 20k iterations, SGD 0.01, poly decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=20000,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000,
                 val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
