import os
import sys

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(2)


@torch.no_grad()
def randomize_bn_stats(model, seed=0):
    """Give every BN non-trivial statistics so a BN fold is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


# The official ParC-Net-S fixture lives in shared/ (inside the checkout or
# beside it); tests that need it skip when neither place has it.
PARCNET_FIXTURE = next(
    (p for p in (os.path.join(d, 'shared', 'reference',
                              'parcnet_s_official.pt')
                 for d in (ROOT, os.path.dirname(ROOT))) if os.path.isfile(p)),
    None)

# --cfg-options that make a demo config load data in the main process.
SINGLE_PROCESS_LOADERS = [
    f'{loader}.{key}'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    for key in ('num_workers=0', 'persistent_workers=False')
]


def config_path(name):
    return os.path.join(ROOT, 'configs', name)


@pytest.fixture
def randomize_bn():
    return randomize_bn_stats
