"""Folded training under SyncBN across processes: 2 gloo processes on the
CPU compute what one process computes on the concatenated batch running the
branches one by one with plain BN (exactly SyncBN's function), in float64;
and :class:`CPUSyncBatchNorm` alone the same."""
import functools
import os.path as osp

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from mmcv.cnn import build_norm_layer

from mmfalcon.models import FalconNet
from mmfalcon.models.layers import RefCO, RepSO, SFConv
from mmfalcon.models.layers.batch_stats import (SYNC_NORMS,
                                                CPUSyncBatchNorm,
                                                describe_folding)

TOL = 1e-10
# The global batch and its split over the 2 processes: unequal, so the
# counts must weigh the processes' moments.
BATCH, SPLIT = 5, (3, 2)


class LoneNorm(nn.Module):
    """A norm alone, built from ``norm_cfg`` as the layers build theirs."""

    def __init__(self, channels, norm_cfg, fold_batch_stats):
        super().__init__()
        self.bn = build_norm_layer(norm_cfg, channels)[1]

    def forward(self, x):
        return self.bn(x)


# name: (builder of norm_cfg and fold_batch_stats, input shape, input
# offset, the SyncBN type the processes train with)
CASES = {
    'repso': (functools.partial(RepSO, 6, dilation=2), (6, 9, 7), 0.5,
              'SyncBN'),
    'refco': (functools.partial(RefCO, 32, 64), (32, 3, 5), 3., 'SyncBN'),
    'sfconv': (functools.partial(SFConv, 64, 64), (64, 2, 2), -1.,
               'SyncBN'),
    'cpu_sync_bn': (functools.partial(LoneNorm, 5), (5, 3, 4), 2.,
                    'mmfalcon.CPUSyncBN'),
    'falconnet': (functools.partial(FalconNet, 'tiny',
                                    out_indices=(0, 1, 2, 3)),
                  (3, 64, 64), 0., 'mmfalcon.CPUSyncBN'),
}


def build(case, norm, fold):
    """The case's model in float64 training mode."""
    model = CASES[case][0](norm_cfg=dict(type=norm), fold_batch_stats=fold)
    return model.double().train()


def forward(model, x):
    """Outputs (a list) of a training forward, and the input, which
    requires its gradient."""
    x = x.detach().clone().requires_grad_()
    outs = model(x)
    return (list(outs) if isinstance(outs, tuple) else [outs]), x


def backward(outs, grads):
    """``loss = sum(out * grad)``, a sum over samples: the processes'
    losses add up to the whole batch's."""
    sum((out * grad).sum() for out, grad in zip(outs, grads)).backward()


def expected_all_reduces(model):
    """One per SyncBN-normalized stage: a RepSO 1 (its five norms share
    the patch moments), an SF-Conv 2 (bn1, bn2), a SyncBN outside them 1."""
    folded = [m for m in model.modules() if isinstance(m, (RepSO, SFConv))]
    inside = {id(bn) for layer in folded for bn in layer.modules()}
    return sum(isinstance(m, RepSO) + 2 * isinstance(m, SFConv) + (
        isinstance(m, CPUSyncBatchNorm) and id(m) not in inside)
               for m in model.modules())


def _worker(rank, work_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo', init_method='file://' + osp.join(work_dir, 'rendezvous'),
        rank=rank, world_size=2)
    calls = []
    all_reduce = dist.all_reduce

    def counted_all_reduce(*args, **kwargs):
        calls.append(1)
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counted_all_reduce
    # every process takes part in creating every group
    own_group = [dist.new_group([r]) for r in range(2)][rank]
    start = sum(SPLIT[:rank])
    part = slice(start, start + SPLIT[rank])
    results = {}
    for case, (_, _, _, sync_norm) in CASES.items():
        given = torch.load(osp.join(work_dir, f'{case}.pt'))
        grads = [grad[part] for grad in given['grads']]
        model = build(case, sync_norm, True)
        model.load_state_dict(given['state'])
        del calls[:]
        outs, x = forward(model, given['x'][part])
        forward_calls = len(calls)
        backward(outs, grads)
        results[case] = dict(
            outs=outs, dx=x.grad,
            param_grads=[p.grad for p in model.parameters()],
            buffers={k: v.clone() for k, v in model.named_buffers()},
            calls=(forward_calls, len(calls) - forward_calls),
            folding=describe_folding(model, case))
        # A group of one process: this process's statistics, no call.
        local = build(case, 'BN', False)
        local.load_state_dict(model.state_dict())
        for module in model.modules():
            if isinstance(module, SYNC_NORMS):
                module.process_group = own_group
        del calls[:]
        own, _ = forward(model, given['x'][part])
        results[case]['own_group'] = dict(
            outs=own, calls=len(calls),
            local=forward(local, given['x'][part])[0])
    torch.save(results, osp.join(work_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.slow
def test_two_processes_fold_as_one_process_runs_branches(tmp_path,
                                                         randomize_bn):
    references = {}
    for case in CASES:
        torch.manual_seed(0)
        reference = randomize_bn(build(case, 'BN', False))
        x = torch.randn(BATCH, *CASES[case][1], dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
        x = x + CASES[case][2]
        state = {k: v.clone() for k, v in reference.state_dict().items()}
        outs, x_ref = forward(reference, x)
        grads = [torch.randn(out.shape, dtype=out.dtype) for out in outs]
        backward(outs, grads)
        torch.save(dict(state=state, x=x, grads=grads),
                   tmp_path / f'{case}.pt')
        references[case] = (reference, outs, x_ref.grad)
    mp.spawn(_worker, args=(str(tmp_path), ), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]

    for case, (reference, outs, dx) in references.items():
        got = [rank[case] for rank in ranks]
        for i, out in enumerate(outs):
            assert relative(torch.cat([g['outs'][i] for g in got]),
                            out) < TOL, case
        assert relative(torch.cat([g['dx'] for g in got]), dx) < TOL, case
        grads = [p.grad for p in reference.parameters()]
        scale = max(g.abs().max() for g in grads)
        for i, grad in enumerate(grads):
            summed = got[0]['param_grads'][i] + got[1]['param_grads'][i]
            assert (summed - grad).abs().max() / scale < TOL, case
        for name, buf in reference.named_buffers():
            for g in got:
                assert torch.allclose(g['buffers'][name], buf, rtol=TOL,
                                      atol=TOL), (case, name)
        calls = expected_all_reduces(build(case, CASES[case][3], True))
        for g in got:
            # one all-reduce per stage in the forward, one in the backward
            assert g['calls'] == (calls, calls), case
            own = g['own_group']
            assert own['calls'] == 0, case
            for out, local in zip(own['outs'], own['local']):
                assert relative(out, local) < TOL, case
    folding = ranks[0]['falconnet']['folding']
    assert folding == ('falconnet trains 15 of 15 re-parameterizable layers '
                       'folded by batch statistics; SyncBN on 15 of them: '
                       'statistics all-reduced over 2 processes.')
