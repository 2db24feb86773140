# The official ParC-Net detection recipe: 200 epochs, AdamW (weight decay
# 0.02), cosine learning rate 9e-4 -> 1e-6, 4 GPUs x 32 images.
max_epochs = 200
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=500),
    dict(type='CosineAnnealingLR', begin=0, T_max=max_epochs,
         end=max_epochs, by_epoch=True, eta_min=1e-6)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=9e-4, weight_decay=0.02),
    paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0))
custom_hooks = [
    dict(type='NumClassCheckHook'),
    dict(type='CheckInvalidLossHook', interval=50, priority='VERY_LOW')
]
# base_batch_size = 4 GPUs x 32 images; do not change.
auto_scale_lr = dict(base_batch_size=128)
