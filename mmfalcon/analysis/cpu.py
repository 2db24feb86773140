"""The CPU a measurement ran on: its model name and vector instruction sets.

The same latency ratio moves by half between CPU models (AVX2 against
AVX-512 with VNNI, BF16 or AMX decides which kernels the runtimes pick),
so every figure is printed with the CPU that gave it.
"""
import os
import platform
from typing import Dict, List

# Vector ISA name -> the /proc/cpuinfo flags, any of which has it.
ISA_FLAGS: Dict[str, tuple] = {
    'AVX2': ('avx2', ),
    'AVX-512': ('avx512f', ),
    'VNNI': ('avx512_vnni', 'avx_vnni'),
    'BF16': ('avx512_bf16', ),
    'FP16': ('avx512_fp16', ),
    'AMX': ('amx_tile', ),
}


def _cpuinfo_field(name: str, path: str = '/proc/cpuinfo') -> str:
    """The value of the first ``name`` line of ``path``, or ''."""
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(':')
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ''


def cpu_model(path: str = '/proc/cpuinfo') -> str:
    """The CPU's model name as lscpu prints it (Linux), else what
    ``platform`` knows.

    Args:
        path (str): The cpuinfo file. Defaults to ``'/proc/cpuinfo'``.
    """
    return (_cpuinfo_field('model name', path) or platform.processor()
            or platform.machine())


def vector_isa(path: str = '/proc/cpuinfo') -> List[str]:
    """The vector instruction sets of :data:`ISA_FLAGS` the CPU has, in
    that order; empty where the flags are unknown (not Linux, not x86).

    Args:
        path (str): The cpuinfo file. Defaults to ``'/proc/cpuinfo'``.
    """
    flags = set(_cpuinfo_field('flags', path).split())
    return [isa for isa, names in ISA_FLAGS.items() if flags & set(names)]


def describe_cpu(path: str = '/proc/cpuinfo') -> str:
    """One line: model, vector ISA and logical cores, e.g. ``Intel(R)
    Xeon(R) Processor (AVX2, AVX-512, VNNI), 2 logical cores``.

    Args:
        path (str): The cpuinfo file. Defaults to ``'/proc/cpuinfo'``.
    """
    isa = vector_isa(path)
    return (f'{cpu_model(path)} ({", ".join(isa) or "vector ISA unknown"}), '
            f'{os.cpu_count()} logical cores')
