from collections import deque

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mmfalcon.models import fuse_model, is_fused
from mmfalcon.registry import HOOKS, register
from .checkpoint import prepare_to_load


@register(HOOKS)
class FuseHook(Hook):
    """Test with fused (re-parameterized) weights.

    Before the checkpoint is loaded, fuses the model when the checkpoint is
    a fused one (it has no training branches to load into); before testing,
    fuses whatever is still unfused. Logs what it did.
    """
    priority = 'VERY_HIGH'

    @staticmethod
    def _fuse(runner, why):
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        if is_fused(model):
            return
        fuse_model(model)
        print_log(f'Re-parameterized the model: every fusable layer is now '
                  f'fused ({why}).', logger='current')

    def before_run(self, runner):
        checkpoint = getattr(runner, '_load_from', None)
        if checkpoint and prepare_to_load(runner.model, checkpoint):
            print_log(f'Re-parameterized the model: {checkpoint} is a fused '
                      'checkpoint.', logger='current')

    def before_test(self, runner):
        self._fuse(runner, 'testing with fused weights')


@register(HOOKS)
class KeepingCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` that removes the checkpoint falling out
    of ``max_keep_ckpts`` only once the new one is saved.

    mmengine 0.10 removes it first, so a crash while saving (with
    ``max_keep_ckpts=1``) leaves no complete checkpoint to resume from.
    Takes the arguments of ``CheckpointHook``.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        keep = self.max_keep_ckpts
        if keep <= 0:
            return super()._save_checkpoint_with_step(runner, step, meta)
        # hold the old one during the save (keep_ckpt_ids is a bounded deque)
        self.keep_ckpt_ids = deque(self.keep_ckpt_ids, keep + 1)
        self.max_keep_ckpts = keep + 1
        try:
            super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            self.max_keep_ckpts = keep
        while len(self.keep_ckpt_ids) > keep:
            old = self.file_backend.join_path(
                self.out_dir,
                self.filename_tmpl.format(self.keep_ckpt_ids.popleft()))
            if is_main_process() and self.file_backend.isfile(old):
                self.file_backend.remove(old)
        runner.message_hub.update_info('keep_ckpt_ids',
                                       list(self.keep_ckpt_ids))
