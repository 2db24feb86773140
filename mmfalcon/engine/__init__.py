from .checkpoint import (FUSED_META_KEY, is_fused_checkpoint,
                         save_fused_checkpoint)
from .hooks import FuseHook, KeepingCheckpointHook
from .optim_wrapper import CPUAmpOptimWrapper

__all__ = [
    'save_fused_checkpoint', 'is_fused_checkpoint', 'FuseHook',
    'FUSED_META_KEY', 'CPUAmpOptimWrapper', 'KeepingCheckpointHook'
]
