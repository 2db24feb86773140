from .benchmark import (BenchmarkRow, count_flops, count_params,
                        format_table, interleaved_times, latency_samples,
                        measure_latency, ratio_spread, train_step_samples)

__all__ = [
    'BenchmarkRow', 'count_params', 'count_flops', 'measure_latency',
    'format_table', 'latency_samples', 'ratio_spread',
    'interleaved_times', 'train_step_samples'
]
