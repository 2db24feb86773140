"""The fusion walker: turns any model into its deploy (fused) form."""
import torch.nn as nn

from mmfalcon.models.layers.reparam import Reparameterizable


def switch_to_deploy(model: nn.Module) -> nn.Module:
    """Fuse every re-parameterizable layer of ``model`` in place.

    Works on any module (backbone, detector, segmentor); knows no model by
    name. Inner layers are fused before the layers that contain them.
    Idempotent. Returns ``model`` for chaining.
    """
    for module in reversed(list(model.modules())):
        if isinstance(module, Reparameterizable):
            module.switch_to_deploy()
    for module in model.modules():
        if hasattr(module, 'deploy') and isinstance(module.deploy, bool):
            module.deploy = True
    return model


def is_deployed(model: nn.Module) -> bool:
    """True when ``model`` holds fusable layers and all of them are fused."""
    layers = [m for m in model.modules() if isinstance(m, Reparameterizable)]
    return bool(layers) and all(m.deployed for m in layers)
