"""Mixed precision training on the CPU."""
from contextlib import contextmanager

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper

from mmfalcon.registry import OPTIM_WRAPPERS, register


@register(OPTIM_WRAPPERS)
class CPUAmpOptimWrapper(OptimWrapper):
    """mmengine's ``OptimWrapper`` whose forward runs under bfloat16
    autocast on the CPU.

    mmengine's ``AmpOptimWrapper`` needs CUDA (or NPU/MLU/MUSA): float16's
    narrow range needs a loss scaler there. bfloat16 keeps float32's
    exponent range, so gradients need no scaling. Takes the arguments of
    ``OptimWrapper``.
    """

    @contextmanager
    def optim_context(self, model: nn.Module):
        with super().optim_context(model), torch.autocast(
                device_type='cpu', dtype=torch.bfloat16):
            yield
