from .benchmark import (BenchmarkRow, count_flops, count_params,
                        format_table, measure_latency)

__all__ = [
    'BenchmarkRow', 'count_params', 'count_flops', 'measure_latency',
    'format_table'
]
