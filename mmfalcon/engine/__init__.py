from .build import init_model
from .checkpoint import (DEPLOY_META_KEY, is_fused_checkpoint,
                         save_fused_checkpoint)
from .deploy import is_deployed, switch_to_deploy
from .hooks import ReparameterizeHook

__all__ = [
    'switch_to_deploy', 'is_deployed', 'init_model', 'save_fused_checkpoint',
    'is_fused_checkpoint', 'ReparameterizeHook', 'DEPLOY_META_KEY'
]
