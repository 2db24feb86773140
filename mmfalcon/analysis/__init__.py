from .benchmark import (BenchmarkRow, count_flops, count_params,
                        format_table, interleaved_times, latency_samples,
                        ratio_spread, timed_rows, train_step_samples)
from .cpu import cpu_model, describe_cpu, vector_isa
from .traffic import memory_bandwidth, onnx_traffic

__all__ = [
    'BenchmarkRow', 'count_params', 'count_flops', 'format_table',
    'latency_samples', 'ratio_spread', 'timed_rows', 'interleaved_times',
    'train_step_samples', 'cpu_model', 'describe_cpu', 'vector_isa',
    'memory_bandwidth', 'onnx_traffic'
]
