from .benchmark import (BenchmarkRow, count_flops, count_params,
                        format_table, interleaved_times, latency_samples,
                        ratio_spread, timed_rows, train_step_samples)

__all__ = [
    'BenchmarkRow', 'count_params', 'count_flops', 'format_table',
    'latency_samples', 'ratio_spread', 'timed_rows', 'interleaved_times',
    'train_step_samples'
]
