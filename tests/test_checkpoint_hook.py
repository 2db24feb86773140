"""A crash while saving a checkpoint keeps the previous one."""
import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmfalcon.engine import KeepingCheckpointHook  # noqa: F401 (registers)
from mmfalcon.fileio import load_checkpoint_file


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs).squeeze(1)  # batches come collated
        if mode == 'loss':
            return dict(loss=(out - labels).square().mean())
        return out


class CrashOnSave(RuntimeError):
    pass


def toy_runner(work_dir, hook, max_keep_ckpts, max_epochs):
    """A runner training ToyModel, one checkpoint an epoch."""
    data = [(torch.randn(2), torch.randn(())) for _ in range(4)]
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=data, batch_size=2,
                              sampler=dict(type='DefaultSampler',
                                           shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type=hook, interval=1,
                                           max_keep_ckpts=max_keep_ckpts)),
        default_scope='mmengine', experiment_name=f'{hook}_{max_keep_ckpts}')


@pytest.mark.parametrize('hook,kept', [('mmfalcon.KeepingCheckpointHook',
                                        True), ('CheckpointHook', False)])
def test_crash_while_saving_keeps_the_last_checkpoint(tmp_path, hook, kept):
    runner = toy_runner(tmp_path, hook, max_keep_ckpts=1, max_epochs=3)
    save = runner.save_checkpoint

    def save_or_crash(out_dir, filename, *args, **kwargs):
        if filename == 'epoch_2.pth':
            raise CrashOnSave(filename)
        return save(out_dir, filename, *args, **kwargs)

    runner.save_checkpoint = save_or_crash
    with pytest.raises(CrashOnSave):
        runner.train()
    # mmengine's own hook (the second case) has removed it already
    assert (tmp_path / 'epoch_1.pth').is_file() == kept
    if kept:
        ckpt = load_checkpoint_file(str(tmp_path / 'epoch_1.pth'))
        assert ckpt['meta']['epoch'] == 1


def test_keeps_max_keep_ckpts_after_saving(tmp_path):
    toy_runner(tmp_path, 'mmfalcon.KeepingCheckpointHook', max_keep_ckpts=2,
               max_epochs=4).train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == [
        'epoch_3.pth', 'epoch_4.pth']
