"""The CPU description every benchmark prints: model name and vector ISA
read from a cpuinfo file."""
from mmfalcon.analysis import cpu_model, describe_cpu, vector_isa

CPUINFO = '''processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni amx_tile
'''


def test_model_and_isa_from_cpuinfo(tmp_path):
    path = tmp_path / 'cpuinfo'
    path.write_text(CPUINFO)
    assert cpu_model(str(path)) == 'Intel(R) Xeon(R) Processor'
    # avx (without 2) and avx512f's prefix must not count as other sets
    assert vector_isa(str(path)) == ['AVX2', 'AVX-512', 'VNNI', 'AMX']
    assert describe_cpu(str(path)).startswith(
        'Intel(R) Xeon(R) Processor (AVX2, AVX-512, VNNI, AMX), ')


def test_an_avx2_only_cpu(tmp_path):
    path = tmp_path / 'cpuinfo'
    path.write_text(CPUINFO.replace(' avx512f avx512_vnni amx_tile',
                                    ' avx_vnni'))
    assert vector_isa(str(path)) == ['AVX2', 'VNNI']


def test_unknown_flags_say_so(tmp_path):
    path = tmp_path / 'cpuinfo'
    path.write_text('model name\t: Some CPU\n')
    assert vector_isa(str(path)) == []
    assert 'vector ISA unknown' in describe_cpu(str(path))
    assert cpu_model(str(tmp_path / 'missing'))  # platform's answer
