from mmengine.hooks import Hook
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
