"""Side-by-side CPU measurements: parameters, FLOPs, median latency."""
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn


@dataclass
class BenchmarkRow:
    name: str
    params: Optional[int] = None
    flops: Optional[int] = None
    latency_ms: Optional[float] = None
    # bytes one inference moves layer by layer (:func:`.traffic.onnx_traffic`)
    traffic_mb: Optional[float] = None
    note: str = ''
    ratios: Dict[str, float] = field(default_factory=dict)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, shape: Sequence[int]) -> Optional[int]:
    """FLOPs (multiply-adds, mmengine's convention) for one input."""
    from mmengine.analysis import FlopAnalyzer
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, torch.randn(*shape))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())


def interleaved_times(calls: Dict[str, Callable[[], object]],
                      warmup: int = 10,
                      runs: int = 50) -> Dict[str, List[float]]:
    """Times in ms of ``runs`` calls of each callable, run round-robin so
    that machine noise hits every one alike; entry ``i`` of every list is
    from round ``i``."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


@torch.no_grad()
def latency_samples(models: Dict[str, nn.Module], shape: Sequence[int],
                    warmup: int = 10, runs: int = 50
                    ) -> Dict[str, List[float]]:
    """Latencies in ms of each model in eval mode, ``runs`` interleaved
    rounds (:func:`interleaved_times`)."""
    x = torch.randn(*shape)
    for model in models.values():
        model.eval()
    return interleaved_times(
        {name: (lambda m=model: m(x)) for name, model in models.items()},
        warmup, runs)


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _tensors(item)]


def train_step_samples(models: Dict[str, nn.Module], shape: Sequence[int],
                       warmup: int = 3, runs: int = 20
                       ) -> Dict[str, List[float]]:
    """Times in ms of one training step of each model (train mode, forward,
    the sum of the outputs' means as the loss, backward), ``runs``
    interleaved rounds."""
    x = torch.randn(*shape)

    def step(model):
        model.zero_grad(set_to_none=True)
        sum(t.mean() for t in _tensors(model(x))).backward()

    for model in models.values():
        model.train()
    return interleaved_times(
        {name: (lambda m=model: step(m)) for name, model in models.items()},
        warmup, runs)


def ratio_spread(times: Dict[str, List[float]], name: str,
                 ref: str) -> Tuple[float, float, float]:
    """Median and quartiles of the per-round time ratio ``name / ref``
    of :func:`interleaved_times` (each round's pair ran back to back)."""
    ratios = [a / b for a, b in zip(times[name], times[ref])]
    if len(ratios) < 2:
        return (ratios[0], ) * 3
    # inclusive: quartiles within the observed ratios, also for few rounds
    low, mid, high = statistics.quantiles(ratios, n=4, method='inclusive')
    return mid, low, high


def timed_rows(entries: Sequence[tuple], times: Dict[str, List[float]],
               suffix: str, shape: Optional[Sequence[int]] = None,
               notes: Optional[Dict[str, str]] = None
               ) -> List[BenchmarkRow]:
    """One :class:`BenchmarkRow` per entry from interleaved ``times``.

    A ratio is the median of the per-round ratios to its reference row
    (both ran back to back in each round), its quartiles in the note.

    Args:
        entries (list): ``(name, model, note, [(ratio column, reference
            row)])``; a model of ``None`` gives an empty row.
        times (dict): Per-round latencies in ms of the rows that ran.
        suffix (str): Appended to each row name (e.g. ``' @320'``).
        shape (Sequence[int], optional): Input shape to count FLOPs at;
            ``None`` counts none.
        notes (dict, optional): Notes replacing the entries' own by name.
    """
    rows = []
    for name, model, note, ratios in entries:
        row = BenchmarkRow(name + suffix, note=(notes or {}).get(name, note))
        if name in times:
            row.params = count_params(model)
            if shape is not None:
                row.flops = count_flops(model, shape)
            row.latency_ms = statistics.median(times[name])
            spreads = []
            for column, ref in ratios:
                if ref in times:
                    mid, low, high = ratio_spread(times, name, ref)
                    row.ratios[column] = mid
                    spreads.append(f'{column} {low:.2f}-{high:.2f}')
            if spreads:
                row.note = '; '.join(
                    ([row.note] if row.note else []) +
                    [f'quartiles {", ".join(spreads)}'])
        rows.append(row)
    return rows


def format_table(rows: List[BenchmarkRow], markdown: bool = False,
                 drop_empty: bool = False) -> str:
    """Rows as an aligned text table, or a Markdown one.

    Args:
        rows (list[BenchmarkRow]): The rows; ratio columns are the union of
            their ``ratios`` keys, sorted.
        markdown (bool): Markdown instead of aligned text. Defaults to
            False.
        drop_empty (bool): Leave out the latency / note columns when no
            row has a value there. Defaults to False.
    """
    ratio_names = sorted({k for r in rows for k in r.ratios})
    traffic = any(r.traffic_mb is not None for r in rows)
    header = ['model', 'params (M)', 'FLOPs (G)'] + (
        ['MB moved'] if traffic else []) + ['median ms'] + ratio_names
    header.append('note')

    def fmt(value, scale=1.0, digits=3):
        return '-' if value is None else f'{value / scale:.{digits}f}'

    lines = []
    for r in rows:
        lines.append([r.name, fmt(r.params, 1e6), fmt(r.flops, 1e9)] + (
            [fmt(r.traffic_mb, digits=1)] if traffic else []) +
            [fmt(r.latency_ms, digits=2)] +
            [fmt(r.ratios.get(k), digits=2) for k in ratio_names] + [r.note])
    if drop_empty:
        keep = [i for i, name in enumerate(header)
                if name not in ('median ms', 'note') or any(
                    line[i] not in ('-', '') for line in lines)]
        header = [header[i] for i in keep]
        lines = [[line[i] for i in keep] for line in lines]
    if markdown:
        out = ['| ' + ' | '.join(header) + ' |',
               '|' + '---|' * len(header)]
        out += ['| ' + ' | '.join(line) + ' |' for line in lines]
        return '\n'.join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    return '\n'.join('  '.join(str(x).ljust(w) for x, w in zip(line, widths))
                     for line in [header] + lines)
