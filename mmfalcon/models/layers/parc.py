"""ParC-Net building blocks: the ParC operator, the ParC block and the
outer frame (ParC-Net, ECCV 2022, section 3; the deploy form is this
project's own).

Every layer with a BN in front of a linear op is a
:class:`FusableLayer`, so :func:`mmfalcon.fuse_model` folds the
whole stage into convolutions with biases and cached bias maps.
"""
import math
import warnings
from collections import OrderedDict
from typing import Hashable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import (build_activation_layer, build_conv_layer,
                      build_norm_layer)

from ..fusion import FusableLayer, bn_scale_shift, fold_conv_bn
from .conv_norm import ConvNorm, build_foldable_conv

_DIMS = {'H': 2, 'W': 3}


def _is_compiling() -> bool:
    """True under torch.compile / torch.export (fake tensors)."""
    is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)
    return torch.compiler.is_compiling() or is_exporting()


def resize_meta(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """Resize a meta kernel / PE along ``dim`` to ``length`` (ParC-Net
    paper, ParC operation).

    1-D bilinear interpolation with ``align_corners=True``, as the official
    ``interpolation_bilinear`` instance-kernel method does.
    """
    if tensor.shape[dim] == length:
        return tensor
    size = list(tensor.shape[2:])
    size[dim - 2] = length
    return F.interpolate(
        tensor, size=size, mode='bilinear', align_corners=True)


def circular_conv(x: torch.Tensor, kernel: torch.Tensor,
                  dim: int) -> torch.Tensor:
    """Depthwise global circular conv: ``y[i] = sum_t k[t] x[(i+t) mod N]``.

    ``kernel`` has length N along ``dim``; appending the first N-1 entries
    and running a valid conv realises the wrap-around (ParC-Net paper, ParC
    operation).
    """
    length = x.shape[dim]
    padded = torch.cat([x, x.narrow(dim, 0, length - 1)], dim=dim)
    return F.conv2d(padded, kernel, groups=x.shape[1])


# From this feature length on, the fused ParC runs as an FFT product: below
# it the circulant matmul was faster (ParC-Net-S's channel counts, 2 threads:
# 3-5x at lengths 10-128, the FFT 1.4-2.3x faster at 256).
FFT_MIN_LENGTH = 256


def circulant(kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-channel matrices M, shape (C, N, N), that compute
    ``circular_conv(x, kernel, dim)`` as ``M @ x`` (``dim`` 2, H) or
    ``x @ M`` (``dim`` 3, W); one matmul instead of a depthwise conv of
    length N over 2N-1 concatenated positions."""
    length = kernel.shape[dim]
    taps = kernel.flatten(1)
    steps = torch.arange(length, device=kernel.device)
    # along H: y[i] = sum_j k[(j - i) mod N] x[j]
    matrix = taps[:, (steps[None, :] - steps[:, None]) % length]
    return matrix if dim == 2 else matrix.transpose(1, 2).contiguous()


def apply_circular(x: torch.Tensor, operand: torch.Tensor,
                   dim: int) -> torch.Tensor:
    """``circular_conv`` by a precomputed operand: a real :func:`circulant`
    matrix, or the complex spectrum ``conj(rfft(kernel))`` (C, N//2+1)."""
    if operand.is_complex():
        # circular cross-correlation = irfft(rfft(x) * conj(rfft(k)))
        spectrum = operand[:, :, None] if dim == 2 else operand[:, None, :]
        return torch.fft.irfft(
            torch.fft.rfft(x, dim=dim) * spectrum, n=x.shape[dim], dim=dim)
    return operand @ x if dim == 2 else x @ operand


def fold_norm_into_conv(norm: nn.modules.batchnorm._BatchNorm,
                        weight: torch.Tensor, bias: Optional[torch.Tensor],
                        groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN that *precedes* a 1x1 conv into the conv.

    Exact for 1x1 kernels (no padding sees the BN shift). Grouped convs are
    handled by indexing the BN scale/shift per output channel's group.
    """
    scale, shift = bn_scale_shift(norm)
    out_channels, in_per_group = weight.shape[:2]
    group = torch.arange(out_channels, device=weight.device) // (
        out_channels // groups)
    scale = scale.reshape(groups, in_per_group)[group]
    shift = shift.reshape(groups, in_per_group)[group]
    flat = weight.flatten(1)
    new_bias = (flat * shift).sum(1)
    if bias is not None:
        new_bias = new_bias + bias
    return (flat * scale).reshape(weight.shape), new_bias


def _static_size(size) -> int:
    """A feature size as a Python int; a tracer hands sizes over as traced
    scalars, and its trace is specific to its input shape anyway."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        return int(size)


# Input sizes a fused ParC layer keeps its derived tensors for. A
# fixed-shape pipeline (SSDLite at 320x320, an export, mmseg's sliding
# window) needs one; under mmdet's keep-ratio testing nearly every image
# pads to a new size, and the entries of one size hold 110-150 MiB in
# fused ParC-Net-S at 1333x800 (800x1216: 129 MiB), so more entries only
# hold memory. A few keep alternating shapes (multi-scale test-time
# augmentation) from being rebuilt on every call.
CACHED_SIZES = 4


class SizeCache:
    """The tensors derived for the :data:`CACHED_SIZES` most recently used
    input sizes; storing one more evicts the least recently used."""

    def __init__(self):
        self._entries = OrderedDict()

    def get(self, size: Hashable) -> Optional[tuple]:
        """The entry of ``size`` (now the most recently used), or None."""
        entry = self._entries.get(size)
        if entry is not None:
            self._entries.move_to_end(size)
        return entry

    def put(self, size: Hashable, entry: tuple) -> tuple:
        """Store ``entry`` for ``size`` as the most recently used and
        return it."""
        self._entries[size] = entry
        self._entries.move_to_end(size)
        if len(self._entries) > CACHED_SIZES:
            self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Hashable]:
        """The cached sizes, least recently used first."""
        return iter(self._entries)


class SizeCachedModule(nn.Module):
    """A module that caches tensors derived from its parameters per input
    size in ``self._cache``, a :class:`SizeCache`, emptied whenever they may
    go stale: on ``train()`` (parameters may change while training), on
    device / dtype moves and on loading a state dict."""

    def __init__(self):
        super().__init__()
        self._cache = SizeCache()

    def train(self, mode: bool = True):
        if mode:
            self._cache.clear()
        return super().train(mode)

    def _apply(self, *args, **kwargs):
        # .to() / .half() / .cuda() make cached tensors stale.
        self._cache.clear()
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)


class ParCFused(SizeCachedModule):
    """Deploy form of :class:`ParC` (this project's): BN-folded kernel +
    bias map.

    In eval mode the kernel is resized once per feature length and cached
    with its bias map, as the circulant matrix of the length
    (:func:`circulant`), or its spectrum from :data:`FFT_MIN_LENGTH` on:
    the faster exact form of each length. The cache keeps the
    :data:`CACHED_SIZES` most recently used lengths. To export for a fixed
    input shape, run the model once at that shape first, in eval mode (as
    :func:`mmfalcon.deployment.export_module` does): a tracer
    (``torch.jit.trace``, ONNX export) then records the cached matrices as
    constants. Traced without a cache entry, the resize is recorded as ops
    on the parameters and nothing is cached. Tracers and training always
    get the matrix (ONNX has no FFT op that torch's exporter writes).

    Args:
        channels (int): Channels C.
        kernel_size (int): Meta kernel length K.
        direction (str): ``'H'`` or ``'W'``.
        with_scale (bool): Hold the folded per-channel BN scale.
        with_bias (bool): Hold the meta-length bias source (BN shift and/or
            position embedding, in the conv's input space).
    """

    def __init__(self, channels: int, kernel_size: int, direction: str,
                 with_scale: bool, with_bias: bool):
        super().__init__()
        self.dim = _DIMS[direction]
        kernel_shape = [channels, 1, 1, 1]
        kernel_shape[self.dim] = kernel_size
        bias_shape = [1, channels, 1, 1]
        bias_shape[self.dim] = kernel_size
        self.kernel = nn.Parameter(torch.zeros(kernel_shape))
        self.scale = nn.Parameter(
            torch.ones(channels, 1, 1, 1)) if with_scale else None
        self.bias = nn.Parameter(
            torch.zeros(bias_shape)) if with_bias else None

    def kernel_at(self, length: int):
        """The depthwise kernel (:func:`circular_conv`'s, BN scale folded
        in) and bias map for a feature of ``length`` along the axis."""
        kernel = resize_meta(self.kernel, length, self.dim)
        bias = None
        if self.bias is not None:
            # The bias source lives before the conv, so it is convolved with
            # the un-scaled kernel; the BN scale only touches the input path.
            bias = circular_conv(
                resize_meta(self.bias, length, self.dim), kernel, self.dim)
        if self.scale is not None:
            kernel = kernel * self.scale
        return kernel, bias

    def instance(self, length: int, spectrum: bool = False):
        """Operand of :func:`apply_circular` and bias map for a feature of
        ``length`` along the axis: the circulant matrix, or with
        ``spectrum`` the kernel's conjugate spectrum."""
        kernel, bias = self.kernel_at(length)
        if spectrum:
            return torch.fft.rfft(kernel.flatten(1), dim=1).conj(), bias
        return circulant(kernel, self.dim), bias

    def _traced_instance(self, length):
        """Under a tracer: the cached matrix entry of an eval run at this
        length, recorded as a constant, else the resize as ops on the
        parameters (an entry made while tracing would hold traced values,
        so none is made)."""
        entry = self._cache.get(_static_size(length))
        if entry is None or entry[0].is_complex():
            return self.instance(length)
        return entry

    def apply_instance(self, x: torch.Tensor, operand: torch.Tensor,
                       bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The layer's output for ``x`` from its :meth:`instance` at
        ``x``'s length, ``operand`` and ``bias``."""
        out = apply_circular(x, operand, self.dim)
        return out if bias is None else out + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[self.dim]
        if self.training or _is_compiling():
            # Training stays differentiable; compilers / torch.export must
            # see the ops on the parameters, not a cache of fake tensors.
            entry = self.instance(length)
        elif torch.jit.is_tracing():
            entry = self._traced_instance(length)
        else:
            entry = self._cache.get(length)
            if entry is None:
                with torch.no_grad():
                    entry = self._cache.put(length, self.instance(
                        length, spectrum=length >= FFT_MIN_LENGTH))
        return self.apply_instance(x, *entry)


class ParC(FusableLayer):
    """Position aware circular convolution (ParC-Net paper, ParC operation;
    "gcc" in the official code): [+PE] -> [norm] -> depthwise global
    circular conv along H or W.

    The meta kernel (C,1,K,1) / (C,1,1,K) and the PE (1,C,K,1) / (1,C,1,K)
    are resized to the actual feature length along their own axis, so
    non-square inputs work (a fix: the official code sizes both from the
    height). Fused, the norm is folded into the kernel and the constant PE
    / BN-shift terms into a bias map.

    Args:
        channels (int): Channels C (depthwise).
        kernel_size (int): Meta kernel length K.
        direction (str): ``'H'`` (along the height) or ``'W'``.
            Defaults to ``'H'``.
        use_pe (bool): Add a learned position embedding to the input.
            Defaults to False.
        norm_cfg (dict | None): Norm applied after the PE, before the conv;
            ``None`` for none. Defaults to None.
        deploy (bool): Build the fused form directly. Defaults to False.
    """
    _branch_names = ('kernel', 'pe', 'norm')

    def __init__(self, channels: int, kernel_size: int, direction: str = 'H',
                 use_pe: bool = False, norm_cfg: Optional[dict] = None,
                 deploy: bool = False):
        super().__init__()
        if direction not in _DIMS:
            raise ValueError(
                f"ParC direction must be 'H' or 'W', got {direction!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.direction = direction
        self.dim = _DIMS[direction]
        self.use_pe = use_pe
        self.with_norm = norm_cfg is not None
        if deploy:
            self.fused = self._make_fused()
            return
        kernel_shape = [channels, 1, 1, 1]
        kernel_shape[self.dim] = kernel_size
        self.kernel = nn.Parameter(torch.empty(kernel_shape))
        # PyTorch's default conv init, as the official meta kernels use.
        nn.init.kaiming_uniform_(self.kernel, a=math.sqrt(5))
        if use_pe:
            pe_shape = [1, channels, 1, 1]
            pe_shape[self.dim] = kernel_size
            self.pe = nn.Parameter(torch.randn(pe_shape))
        else:
            self.register_parameter('pe', None)
        self.norm = build_norm_layer(norm_cfg, channels)[1] \
            if norm_cfg is not None else None

    def _make_fused(self) -> nn.Module:
        return ParCFused(self.channels, self.kernel_size, self.direction,
                         with_scale=self.with_norm,
                         with_bias=self.use_pe or self.with_norm)

    def _fused_state(self):
        state = dict(kernel=self.kernel)
        # norm(x + pe) = s * x + (s * pe + t): a per-channel scale on the
        # input path and a constant source that becomes the bias map.
        source = self.pe
        if self.norm is not None:
            scale, shift = bn_scale_shift(self.norm)
            state['scale'] = scale.reshape(-1, 1, 1, 1)
            shift = shift.reshape(1, -1, 1, 1)
            source = shift if source is None else \
                source * scale.reshape(1, -1, 1, 1) + shift
        if source is not None:
            bias_shape = [1, self.channels, 1, 1]
            bias_shape[self.dim] = self.kernel_size
            state['bias'] = source.expand(bias_shape).clone()
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_fused:
            return self.fused(x)
        length = x.shape[self.dim]
        if self.pe is not None:
            x = x + resize_meta(self.pe, length, self.dim)
        if self.norm is not None:
            x = self.norm(x)
        return circular_conv(x, resize_meta(self.kernel, length, self.dim),
                             self.dim)


class PreNormConv(FusableLayer):
    """Norm -> 1x1 conv (-> norm) (-> act); fuses into one 1x1 conv.

    Serves the FFN input layer (BN -> 1x1 + bias -> Hardswish) and the outer
    frame's final BN + channel adapter (BN -> grouped 1x1 -> BN -> SiLU).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        groups (int): Conv groups. Defaults to 1.
        bias (bool): Conv bias. Defaults to False.
        post_norm (bool): Add a norm after the conv. Defaults to False.
        conv_cfg (dict | None): Config of the training conv, built by
            :func:`~.conv_norm.build_foldable_conv`; ``None`` for
            ``nn.Conv2d``. The fused conv is always a plain ``nn.Conv2d``.
            Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict | None): Activation config. Defaults to None.
        deploy (bool): Build the fused form directly. Defaults to False.
    """
    _branch_names = ('pre_norm', 'conv', 'norm')

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1,
                 bias: bool = False, post_norm: bool = False,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = None, deploy: bool = False):
        super().__init__()
        self.conv_args = dict(in_channels=in_channels,
                              out_channels=out_channels, kernel_size=1,
                              groups=groups)
        if deploy:
            self.fused = self._make_fused()
        else:
            self.pre_norm = build_norm_layer(norm_cfg, in_channels)[1]
            self.conv = build_foldable_conv(conv_cfg, **self.conv_args,
                                            bias=bias)
            self.norm = build_norm_layer(norm_cfg, out_channels)[1] \
                if post_norm else None
        self.act = build_activation_layer(act_cfg) if act_cfg else None

    def _make_fused(self) -> nn.Module:
        return nn.Conv2d(**self.conv_args, bias=True)

    def _fused_state(self):
        weight, bias = fold_norm_into_conv(
            self.pre_norm, self.conv.weight, self.conv.bias,
            self.conv_args['groups'])
        if self.norm is not None:
            weight, bias = fold_conv_bn(weight, bias, self.norm)
        return dict(weight=weight, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_fused:
            x = self.fused(x)
        else:
            x = self.conv(self.pre_norm(x))
            if self.norm is not None:
                x = self.norm(x)
        return self.act(x) if self.act is not None else x


class ChannelAttention(nn.Module):
    """Channel attention "ca" of the ParC block (ParC-Net paper, the "SE"):
    ``x * gate(norm(1x1(act(norm(1x1(mean_hw(x)))))))``.

    Args:
        channels (int): Channels C.
        reduction (int): Hidden width = C // reduction. Defaults to 16.
        conv_cfg (dict | None): Config of the two 1x1 convs (see
            :class:`ConvNorm`). Defaults to None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Hidden activation. Defaults to
            ``dict(type='HSwish', inplace=True)`` (PyTorch's Hardswish).
        gate_cfg (dict): Gate activation. Defaults to
            ``dict(type=nn.Hardsigmoid, inplace=True)``: PyTorch's
            Hardsigmoid, named by its class since no registry holds it
            (mmcv's ``HSigmoid`` computes the same function but warns on
            every construction).
        deploy (bool): Build fused convs directly. Defaults to False.
    """

    def __init__(self, channels: int, reduction: int = 16,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='HSwish', inplace=True),
                 gate_cfg: dict = dict(type=nn.Hardsigmoid, inplace=True),
                 deploy: bool = False):
        super().__init__()
        hidden = channels // reduction
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy)
        self.squeeze = ConvNorm(channels, hidden, 1, act_cfg=act_cfg,
                                **common)
        self.excite = ConvNorm(hidden, channels, 1, act_cfg=gate_cfg,
                               **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excite(self.squeeze(x.mean((2, 3), keepdim=True)))


class ParCBlock(SizeCachedModule):
    """ParC block, meta-former style (ParC-Net paper; official ``gcc_ca``):
    a ParC token mixer on two channel halves, then ``z + CA(FFN(z))``.

    Half 1: +PE -> BN -> ParC-H -> +PE -> ParC-W; half 2 the same with W
    first. Each half has its own residual.

    Fused and in eval mode, the token mixer runs merged (this project's
    deploy form): with the BN folded, each channel's mixer plus residual is
    one affine map ``x + R @ x @ C + b``, R and C circulant (the ParC-H and
    ParC-W kernels) and b the mixer's output for a zero input. All channels
    then take two batched matmuls and one add instead of a split, four
    products, up to six adds and a concat. R, C and b are cached for the
    :data:`CACHED_SIZES` most recently used feature sizes (a tracer records
    them as constants, as for :class:`ParCFused`).

    Args:
        channels (int): Block width Cs (split into two halves).
        ffn_channels (int): FFN hidden width.
        kernel_size (int): Meta kernel length K.
        use_pe (bool): Position embeddings (first block of a stage only).
            Defaults to False.
        ffn_drop_rate (float): Dropout inside the FFN. Defaults to 0.
        drop_rate (float): Dropout after the FFN. Defaults to 0.1.
        ca_reduction (int): Channel attention reduction. Defaults to 16.
        conv_cfg (dict | None): Config of the FFN and channel attention
            convs (the FFN's output conv, which fusion leaves alone, built
            by mmcv's ``build_conv_layer``, the others as in
            :class:`ConvNorm`); ``None`` for ``nn.Conv2d``. Defaults to
            None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        ffn_act_cfg (dict): FFN / CA hidden activation. Defaults to
            ``dict(type='HSwish', inplace=True)``.
        gate_cfg (dict): CA gate. Defaults to
            ``dict(type=nn.Hardsigmoid, inplace=True)`` (see
            :class:`ChannelAttention`).
        deploy (bool): Build fused layers directly. Defaults to False.
    """

    def __init__(self, channels: int, ffn_channels: int, kernel_size: int,
                 use_pe: bool = False, ffn_drop_rate: float = 0.,
                 drop_rate: float = 0.1, ca_reduction: int = 16,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 ffn_act_cfg: dict = dict(type='HSwish', inplace=True),
                 gate_cfg: dict = dict(type=nn.Hardsigmoid, inplace=True),
                 deploy: bool = False):
        super().__init__()
        if channels % 2:
            raise ValueError(
                f'ParCBlock channels must be even, got {channels}')
        self.channels = channels
        half = channels // 2
        common = dict(kernel_size=kernel_size, use_pe=use_pe, deploy=deploy)
        self.mixer_hw = nn.Sequential(
            ParC(half, direction='H', norm_cfg=norm_cfg, **common),
            ParC(half, direction='W', **common))
        self.mixer_wh = nn.Sequential(
            ParC(half, direction='W', norm_cfg=norm_cfg, **common),
            ParC(half, direction='H', **common))
        self.ffn = nn.Sequential(
            PreNormConv(channels, ffn_channels, bias=True, conv_cfg=conv_cfg,
                        norm_cfg=norm_cfg, act_cfg=ffn_act_cfg,
                        deploy=deploy),
            nn.Dropout(ffn_drop_rate),
            build_conv_layer(conv_cfg, ffn_channels, channels, 1),
            nn.Dropout(drop_rate))
        self.ca = ChannelAttention(channels, ca_reduction, conv_cfg=conv_cfg,
                                   norm_cfg=norm_cfg, act_cfg=ffn_act_cfg,
                                   gate_cfg=gate_cfg, deploy=deploy)

    def _merged_mixer(self, x: torch.Tensor) -> Optional[tuple]:
        """Row circulants R (C, H, H), column circulants C (C, W, W) and bias
        map b (1, C, H, W) of the merged token mixer for ``x``'s size, or
        ``None`` where the two-half form runs: unfused, training, under a
        compiler, under a tracer without a cached entry (it then records the
        resize ops), or an axis of :data:`FFT_MIN_LENGTH` or more (where
        each :class:`ParCFused` takes its faster FFT form)."""
        parcs = [*self.mixer_hw, *self.mixer_wh]
        if self.training or _is_compiling() or not all(
                parc.is_fused for parc in parcs):
            return None
        size = tuple(_static_size(n) for n in x.shape[2:])
        entry = self._cache.get(size)
        if entry is not None or torch.jit.is_tracing() or (
                max(size) >= FFT_MIN_LENGTH):
            return entry
        with torch.no_grad():
            return self._cache.put(size, self._merge(*size, like=x))

    def _merge(self, height: int, width: int, like: torch.Tensor) -> tuple:
        """R, C and b of the merged mixer for a ``height`` x ``width`` map
        (dtype and device of ``like``), from each fused ParC's instance at
        its length, made once here: the ParCs' own caches stay empty, as
        nothing reads them while the merged form runs."""
        lengths = dict(H=height, W=width)
        rows, cols, biases = [], [], []
        for mixer in (self.mixer_hw, self.mixer_wh):
            # the mixer is affine: its value at zero is its bias map
            out = like.new_zeros(1, self.channels // 2, height, width)
            for parc in mixer:
                operand, bias = parc.fused.instance(lengths[parc.direction])
                (rows if parc.direction == 'H' else cols).append(operand)
                out = parc.fused.apply_instance(out, operand, bias)
            biases.append(out)
        return torch.cat(rows), torch.cat(cols), torch.cat(biases, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The circulant products run on contiguous (NCHW) channel maps; a
        # channels_last input (ParCNet's inference layout) is copied to NCHW
        # for them and the mixed result back, so the block's convs keep
        # running on channels_last.
        memory_format = torch.channels_last if x.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format
        x = x.contiguous()
        merged = self._merged_mixer(x)
        if merged is None:
            x1, x2 = x.chunk(2, dim=1)
            z = torch.cat([x1 + self.mixer_hw(x1), x2 + self.mixer_wh(x2)],
                          dim=1)
        elif torch.jit.is_tracing():
            rows, cols, bias = merged
            z = x + rows @ x @ cols + bias
        else:
            rows, cols, bias = merged
            # Sample by sample: a product broadcast over the batch would
            # copy the circulants once per sample. In place on a copy of x,
            # indexed (in-place ops on unbound views break autograd).
            z = x.clone()
            for i in range(x.shape[0]):
                z[i].baddbmm_(torch.bmm(rows, x[i]), cols)
            z = z.add_(bias)
        z = z.contiguous(memory_format=memory_format)
        return z + self.ca(self.ffn(z))


class ParCOuterFrame(nn.Module):
    """Outer frame (ParC-Net paper): the MobileViT block with its
    transformer replaced by ParC blocks; local conv -> ParC blocks -> fuse
    with input.

    ``local_rep`` (3x3 grouped conv + norm + act), ``proj`` (dense 1x1, no
    norm), the ParC blocks, ``channel_adaptive`` (norm -> grouped 1x1 ->
    norm -> act) and ``fusion`` (3x3 conv + norm + act on
    ``concat(global, x)`` or on ``global + x``).

    Args:
        in_channels (int): Input / output channels C.
        channels (int): Width Cs of the ParC blocks.
        ffn_channels (int): FFN hidden width of the ParC blocks.
        num_blocks (int): Number of ParC blocks.
        kernel_size (int): Meta kernel length K.
        fusion (str): ``'concat'`` (ParC-Net-S) or ``'add'`` (XS).
            Defaults to ``'concat'``.
        use_pe (bool): Position embeddings in the first block.
            Defaults to True.
        drop_rate (float): Dropout after each FFN. Defaults to 0.1.
        conv_cfg (dict | None): Config of every conv (``proj``, which no
            BN follows, built by mmcv's ``build_conv_layer``, the others as
            in :class:`ConvNorm`); ``None`` for ``nn.Conv2d``. Defaults to
            None.
        norm_cfg (dict): Norm config. Defaults to ``dict(type='BN')``.
        act_cfg (dict): Activation of the conv layers. Defaults to
            ``dict(type='SiLU', inplace=True)``.
        deploy (bool): Build fused layers directly. Defaults to False.
    """

    def __init__(self, in_channels: int, channels: int, ffn_channels: int,
                 num_blocks: int, kernel_size: int, fusion: str = 'concat',
                 use_pe: bool = True, drop_rate: float = 0.1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='SiLU', inplace=True),
                 deploy: bool = False):
        super().__init__()
        if fusion not in ('concat', 'add'):
            raise ValueError(
                f"fusion must be 'concat' or 'add', got {fusion!r}")
        self.fusion_mode = fusion
        groups = math.gcd(channels, in_channels)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, deploy=deploy)
        self.local_rep = ConvNorm(in_channels, channels, 3, groups=groups,
                                  act_cfg=act_cfg, **common)
        self.proj = build_conv_layer(conv_cfg, channels, channels, 1,
                                     bias=False)
        self.blocks = nn.Sequential(*[
            ParCBlock(channels, ffn_channels, kernel_size,
                      use_pe=use_pe and i == 0, drop_rate=drop_rate,
                      **common) for i in range(num_blocks)
        ])
        self.channel_adaptive = PreNormConv(
            channels, in_channels, groups=groups, post_norm=True,
            act_cfg=act_cfg, **common)
        fusion_in = 2 * in_channels if fusion == 'concat' else in_channels
        self.fusion = ConvNorm(fusion_in, in_channels, 3, act_cfg=act_cfg,
                               **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.channel_adaptive(self.blocks(self.proj(self.local_rep(x))))
        if self.fusion_mode == 'concat':
            return self.fusion(torch.cat([y, x], dim=1))
        return self.fusion(y + x)
