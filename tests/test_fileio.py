"""The checkpoint loader (mmfalcon.fileio): training and fused checkpoints
load with no opt-in, a file that would run code is refused on every load
path and its payload never runs, a truncated file is named."""
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint

from mmfalcon.apis import init_model
from mmfalcon.engine import is_fused_checkpoint, save_fused_checkpoint
from mmfalcon.engine.checkpoint import check_trainable, find_resume_checkpoint
from mmfalcon.fileio import (TRUST_ENV, TRUST_FLAG, CheckpointError,
                             UntrustedCheckpointError, checkpoint_is_complete,
                             load_checkpoint_file)
from mmfalcon.models import FalconNet, fuse_model

DEMO = 'demo/ssdlite_falcon_shapes.py'


def training_checkpoint(path):
    """What mmengine's runner saves: numpy in the message hub and meta."""
    hub = MessageHub.get_instance('test_fileio')
    for value in (np.float64(0.5), np.float32(0.25), 1.0):
        hub.update_scalar('train/loss', value)
    hub.update_info('iter', np.int64(7))
    torch.save(dict(
        meta=dict(epoch=1, iter=np.int64(7), seed=np.int32(3),
                  dataset_meta=dict(classes=('a', 'b'),
                                    palette=[(1, 2, 3), (4, 5, 6)])),
        state_dict=FalconNet('tiny').state_dict(),
        message_hub=hub.state_dict(),
        extra=dict(mask=np.array([True, False]),
                   table=np.arange(6, dtype=np.int16).reshape(2, 3))),
        path)
    return str(path)


def test_training_checkpoint_loads_without_opt_in(tmp_path, clean_env):
    path = training_checkpoint(tmp_path / 'epoch_1.pth')
    # torch's own weights-only default refuses it
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    for ckpt in (load_checkpoint_file(path), _load_checkpoint(path)):
        assert ckpt['meta']['iter'] == 7 and ckpt['meta']['seed'] == 3
        assert ckpt['meta']['dataset_meta']['palette'][0] == (1, 2, 3)
        buffer = ckpt['message_hub']['log_scalars']['train/loss']
        assert isinstance(buffer, HistoryBuffer)
        assert buffer.data[0].tolist() == [0.5, 0.25, 1.0]
        assert ckpt['extra']['table'].dtype == np.int16
        assert ckpt['extra']['mask'].tolist() == [True, False]


def _load_paths(config_path):
    """Every library path that reads a checkpoint file."""
    config = config_path(DEMO)

    def pretrained(path):
        FalconNet('tiny', init_cfg=dict(type='Pretrained',
                                        checkpoint=path)).init_weights()

    return {
        'loader': load_checkpoint_file,
        'load_from / resume': lambda p: load_checkpoint(
            FalconNet('tiny'), p),
        'init_cfg Pretrained': pretrained,
        'init_model': lambda p: init_model(config, p),
        'is_fused_checkpoint': is_fused_checkpoint,
    }


@pytest.mark.parametrize('path_name', [
    'loader', 'load_from / resume', 'init_cfg Pretrained', 'init_model',
    'is_fused_checkpoint'
])
def test_code_running_checkpoint_is_refused(path_name, crafted_checkpoint,
                                             clean_env, config_path):
    path, marker = crafted_checkpoint
    with pytest.raises(UntrustedCheckpointError) as info:
        _load_paths(config_path)[path_name](path)
    message = str(info.value)
    for part in (path, 'posix.system', TRUST_FLAG, f'{TRUST_ENV}=1'):
        assert part in message, message
    assert not marker.exists()


def test_opt_in_loads_with_full_pickle(crafted_checkpoint, monkeypatch):
    path, marker = crafted_checkpoint
    monkeypatch.setenv(TRUST_ENV, '1')
    ckpt = load_checkpoint_file(path)
    assert marker.exists()  # the user trusted it: full pickle ran
    assert set(ckpt['state_dict']) == set(FalconNet('tiny').state_dict())


class _GetattrPayload:

    def __reduce__(self):
        return getattr, (HistoryBuffer, 'register_statistics')


def test_getattr_is_only_a_history_buffer_statistic(tmp_path, clean_env):
    path = str(tmp_path / 'getattr.pth')
    torch.save(dict(meta=_GetattrPayload()), path)
    with pytest.raises(UntrustedCheckpointError,
                       match="getattr.*register_statistics"):
        load_checkpoint_file(path)


def test_truncated_checkpoint_is_named(tmp_path, clean_env):
    path = training_checkpoint(tmp_path / 'epoch_2.pth')
    assert checkpoint_is_complete(path)
    with open(path, 'rb') as f:
        data = f.read()
    for size in (len(data) // 2, 10):
        with open(path, 'wb') as f:
            f.write(data[:size])
        assert not checkpoint_is_complete(path)
        with pytest.raises(CheckpointError,
                           match=f'{path} is not a complete checkpoint'):
            load_checkpoint_file(path)


def test_resume_never_picks_a_truncated_checkpoint(tmp_path, clean_env):
    work = tmp_path / 'work'
    work.mkdir()
    first = training_checkpoint(work / 'epoch_1.pth')
    second = training_checkpoint(work / 'epoch_2.pth')
    os.utime(first, (1, 1))  # older
    assert find_resume_checkpoint(str(work)) == second
    with open(second, 'r+b') as f:
        f.truncate(osp.getsize(second) // 2)
    # the crash hit after mmengine named it in last_checkpoint
    (work / 'last_checkpoint').write_text(second)
    assert find_resume_checkpoint(str(work)) == first
    os.remove(first)
    assert find_resume_checkpoint(str(work)) is None
    assert find_resume_checkpoint(str(tmp_path / 'empty')) is None


def test_fused_checkpoint_metadata_and_training_refusal(
        tmp_path, clean_env, config_path):
    model = fuse_model(init_model(config_path(DEMO), None, fuse=False))
    path = str(tmp_path / 'fused.pth')
    palette = [(220, 20, 60), (0, 0, 142)]
    save_fused_checkpoint(model, path, meta=dict(
        source_checkpoint='epoch_2.pth',
        dataset_meta=dict(classes=('a', 'b'), palette=palette,
                          count=np.int64(2))))
    meta = torch.load(path, weights_only=True)['meta']
    # the visualizers need color tuples; numpy scalars become plain ones
    assert meta['dataset_meta'] == dict(classes=('a', 'b'), palette=palette,
                                        count=2)
    assert is_fused_checkpoint(path)
    for resume in (True, False):
        with pytest.raises(CheckpointError,
                           match=r'fused checkpoint.*cannot '
                           f'{"resume" if resume else "start"}.*epoch_2.pth'):
            check_trainable(path, resume)
    check_trainable(training_checkpoint(tmp_path / 'epoch_1.pth'), True)


def test_resume_into_a_model_of_other_shapes_is_refused(tmp_path):
    path = training_checkpoint(tmp_path / 'epoch_1.pth')  # FalconNet tiny
    check_trainable(path, True, model=FalconNet('tiny'))
    check_trainable(path, False, model=FalconNet('small'))  # load_from
    with pytest.raises(CheckpointError,
                       match=r'cannot resume from .*epoch_1.pth: \d+ '
                       r'weight\(s\) have other shapes.*stem.*\(8, 3, 3, 3\) '
                       r'in the checkpoint, \(12, 3, 3, 3\) in the model'):
        check_trainable(path, True, model=FalconNet('small'))
