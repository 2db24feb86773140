"""The form in which a fused ParC token mixer is exported.

A fused :class:`~mmfalcon.models.layers.parc.ParCBlock` mixes its tokens
with four global circular convolutions (ParC-H then ParC-W on one channel
half, ParC-W then ParC-H on the other), each a BN-folded kernel resized to
the feature length plus a bias map. The same function can be written in
several exact forms, which runtimes run at different speeds:

* ``'merged'``: PyTorch's own deploy form, one affine map per block,
  ``x + R @ x @ C + b`` (R, C the per-channel circulant matrices): two
  MatMuls and two Adds for all channels;
* ``'matmul'``: the two halves, each ParC one circulant MatMul and its bias
  Add, then the residual Adds and a Concat;
* ``'conv'``: the two halves, each ParC as the paper writes it: the
  feature concatenated with its first N-1 rows (or columns), then a
  depthwise conv with the N-tap kernel, and its bias Add.

PyTorch's own FFT form (``irfft(rfft(x) * conj(rfft(k)))``, from
:data:`~mmfalcon.models.layers.parc.FFT_MIN_LENGTH` on) is not one of
them: torch's TorchScript exporter writes no op for ``torch.fft``, and at
the lengths ParC features have at export sizes (10-64) PyTorch ran it
3-5x slower than the circulant product anyway.

Each runtime's form is :attr:`~mmfalcon.deployment.backends.Backend.
parc_form`, the fastest measured there (docs/deployment.md): the merged
map in ONNX Runtime and OpenVINO, the depthwise conv in ncnn, whose
batched MatMul is slow. The user's model is never changed: a form is
built on a copy.
"""
import torch
import torch.nn as nn

from mmfalcon.models.layers.parc import (ParCBlock, ParCFused,
                                        SizeCachedModule, _static_size,
                                        apply_circular, circular_conv)

PARC_FORMS = ('merged', 'matmul', 'conv')


def check_parc_form(form: str) -> None:
    """Refuse a ``form`` that is not one of :data:`PARC_FORMS`."""
    if form not in PARC_FORMS:
        why = (' (torch\'s ONNX exporter writes no op for torch.fft)'
               if form == 'fft' else '')
        raise ValueError(f'ParC export form {form!r}{why}: expected one of '
                         f'{PARC_FORMS}')


class CircularForm(SizeCachedModule):
    """One fused ParC (:class:`~mmfalcon.models.layers.parc.ParCFused`) in
    the form ``'matmul'`` or ``'conv'``.

    Its kernel and bias map are made from the fused layer's parameters once
    per feature length outside any tracer and cached as the fused layer
    caches its own: an export traces the form after one run at the export
    shape, and records them as constants. Traced without a cache entry, they
    are recorded as ops on the parameters and nothing is cached.

    Args:
        fused (ParCFused): The fused ParC; its parameters are read, it is
            not changed.
        form (str): ``'matmul'`` or ``'conv'``.
    """

    def __init__(self, fused: ParCFused, form: str):
        super().__init__()
        if not isinstance(fused, ParCFused):
            raise TypeError(f'expected a ParCFused, got '
                            f'{type(fused).__name__}')
        if form not in ('matmul', 'conv'):
            raise ValueError(f"CircularForm form {form!r}: expected "
                             f"'matmul' or 'conv'")
        self.fused, self.form, self.dim = fused, form, fused.dim

    def _make(self, length: int):
        if self.form == 'conv':
            return self.fused.kernel_at(length)
        return self.fused.instance(length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = _static_size(x.shape[self.dim])
        entry = self._cache.get(length)
        if entry is None and torch.jit.is_tracing():
            entry = self._make(length)
        elif entry is None:
            with torch.no_grad():
                entry = self._cache.put(length, self._make(length))
        operand, bias = entry
        if self.form == 'conv':
            out = circular_conv(x, operand, self.dim)
        else:
            out = apply_circular(x, operand, self.dim)
        return out if bias is None else out + bias


class ParCBlockForm(nn.Module):
    """A fused :class:`~mmfalcon.models.layers.parc.ParCBlock` with its
    token mixer in the two-half form, each ParC a :class:`CircularForm`;
    the FFN and channel attention are the block's own.

    Args:
        block (ParCBlock): The fused block, in eval mode; its layers are
            shared, not copied, so build the form on a copy.
        form (str): ``'matmul'`` or ``'conv'``.
    """

    def __init__(self, block: ParCBlock, form: str):
        super().__init__()
        parcs = [*block.mixer_hw, *block.mixer_wh]
        if not all(parc.is_fused for parc in parcs):
            raise ValueError('ParCBlockForm needs a fused ParCBlock; fuse '
                             'the model first (mmfalcon.fuse_model)')
        self.mixer_hw = nn.Sequential(
            *(CircularForm(parc.fused, form) for parc in block.mixer_hw))
        self.mixer_wh = nn.Sequential(
            *(CircularForm(parc.fused, form) for parc in block.mixer_wh))
        self.ffn, self.ca = block.ffn, block.ca

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.contiguous().chunk(2, dim=1)
        z = torch.cat([x1 + self.mixer_hw(x1), x2 + self.mixer_wh(x2)],
                      dim=1)
        return z + self.ca(self.ffn(z))


def parc_export_form(block: ParCBlock, form: str = 'merged') -> nn.Module:
    """The module a fused ParC block is exported as: the block itself for
    ``'merged'``, a :class:`ParCBlockForm` otherwise.

    Args:
        block (ParCBlock): The fused block (shared, not copied).
        form (str): One of :data:`PARC_FORMS`. Defaults to ``'merged'``.

    Returns:
        nn.Module: The export form, computing the same as ``block``.
    """
    if not isinstance(block, ParCBlock):
        raise TypeError(f'expected a ParCBlock, got {type(block).__name__}')
    check_parc_form(form)
    return block if form == 'merged' else ParCBlockForm(block, form)
