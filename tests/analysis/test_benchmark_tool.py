"""The benchmark script runs and fills every available row (a smoke test:
speed is measured by the script itself, not asserted here)."""
import re

import pytest


def table_rows(stdout):
    """The printed table's cells by row name (its first cell)."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r'\s{2,}', line.strip())
        rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_benchmark_prints_a_complete_table(run_tool):
    out = run_tool('analysis/benchmark.py', '--runs', '1', '--warmup', '0',
                   '--sizes', '96', '--no-models')
    assert out.stdout.splitlines()[1].startswith('PyTorch'), out.stdout
    rows = table_rows(out.stdout)
    for name in ('FalconNet unfused @96', 'FalconNet fused (matmul) @96',
                 'FalconNet fused (conv) @96',
                 'mmdet MobileNetV2 (4, 7) @96', 'ParC-Net-S os32 fused @96'):
        assert name in rows, out.stdout
        params, flops, latency = rows[name][1:4]
        assert '-' not in (params, flops, latency), rows[name]
    vit = rows['MobileViT-S @96']
    assert 'unavailable' in vit[-1] or '-' not in vit[1:4], vit


@pytest.mark.slow
def test_benchmark_parcnet_rows_above_320(run_tool):
    """Above 320, ParC-Net-S runs at output stride 32 (like MobileViT-S)
    and 16 (the DeepLabV3 backbone), each fused row with its per-round
    ratio to MobileViT-S when that is available."""
    out = run_tool('analysis/benchmark.py', '--runs', '2', '--warmup', '0',
                   '--sizes', '352', '--no-models')
    rows = table_rows(out.stdout)
    vit_available = 'unavailable' not in rows['MobileViT-S @352'][-1]
    for out_stride in (32, 16):
        row = rows[f'ParC-Net-S os{out_stride} fused @352']
        assert '-' not in row[1:4], row
        assert ('x MobileViT-S' in row[-1]) == vit_available, row


@pytest.mark.slow
def test_benchmark_train_rows(run_tool):
    out = run_tool('analysis/benchmark.py', '--train', '--runs', '2',
                   '--warmup', '0', '--sizes', '64', '--batch', '2')
    rows = table_rows(out.stdout)
    for name in ('FalconNet-base', 'ParC-Net-S os32',
                 'mmdet MobileNetV2 (4, 7)'):
        row = rows[f'{name} train @64 x2']
        assert row[3] != '-', row  # median ms
    assert 'quartiles x MobileNetV2' in rows[
        'FalconNet-base train @64 x2'][-1], out.stdout
    # the branch-by-branch form, timed against the folded one
    branches = rows['FalconNet-base, branches one by one train @64 x2']
    assert 'fold_batch_stats=False' in branches[-1], branches
    assert 'x folded' in branches[-1], branches
    vit = rows['MobileViT-S train @64 x2']
    assert 'unavailable' in vit[-1] or vit[3] != '-', vit


@pytest.mark.slow
def test_benchmark_compiled_train_rows(run_tool):
    """--train --compile: FalconNet-base and ParC-Net-S also compiled, each
    timed against its eager step, its compile time in the note (aot_eager
    here: inductor's code generation takes minutes)."""
    out = run_tool('analysis/benchmark.py', '--train', '--compile',
                   'aot_eager', '--runs', '2', '--warmup', '0', '--sizes',
                   '64', '--batch', '2')
    rows = table_rows(out.stdout)
    for name in ('FalconNet-base', 'ParC-Net-S os32'):
        row = rows[f'{name}, torch.compile train @64 x2']
        assert row[3] != '-', row
        assert re.search(r'aot_eager, compiled in \d+ s; quartiles x eager '
                         r'[\d.]+-[\d.]+, x MobileNetV2', row[-1]), row


@pytest.mark.slow
@pytest.mark.parametrize('runtime,tag,header', [
    ('onnxruntime', 'ORT', 'ONNX Runtime'),
    ('openvino', 'OpenVINO', 'OpenVINO'),
    ('ncnn', 'ncnn', 'ncnn'),
])
def test_benchmark_runtime_rows(run_tool, runtime, tag, header):
    """--backend: the fused rows exported and timed in a deploy runtime,
    ratios with their quartiles; no unfused rows (deployment runs fused),
    one fused FalconNet row (the export picks the SF-Conv form itself);
    the CPU and its vector ISA head the table."""
    from mmfalcon.deployment.backends import (BackendNotInstalledError,
                                              get_backend)
    try:
        get_backend(runtime).require()
    except BackendNotInstalledError as exc:
        pytest.skip(str(exc))
    out = run_tool('analysis/benchmark.py', '--backend', runtime, '--runs',
                   '2', '--warmup', '0', '--sizes', '96', '--no-models')
    cpu, runtime_line = out.stdout.splitlines()[:2]
    assert re.fullmatch(r'CPU: .+ \(.+\), \d+ logical cores; memory copy '
                        r'bandwidth [\d.]+ GB/s', cpu), cpu
    assert runtime_line.startswith(header), runtime_line
    rows = table_rows(out.stdout)
    assert not any('unfused' in name for name in rows), list(rows)
    assert [name for name in rows if name.startswith('FalconNet fused')
            ] == [f'FalconNet fused @96 {tag}'], list(rows)
    for name in ('FalconNet fused', 'mmdet MobileNetV2 (4, 7)',
                 'ParC-Net-S os32 fused'):
        row = rows[f'{name} @96 {tag}']
        assert '-' not in row[1:5], row  # params, FLOPs, MB moved, ms
    falcon = rows[f'FalconNet fused @96 {tag}']
    assert 'quartiles x MobileNetV2' in falcon[-1], falcon
    vit = rows[f'MobileViT-S @96 {tag}']
    assert 'unavailable' in vit[-1] or '-' not in vit[1:5], vit


@pytest.mark.slow
def test_benchmark_whole_ssdlite_rows(run_tool):
    """At 320 the whole SSDLite-FalconNet is timed against mmdet's own
    SSDLite-MobileNetV2, both fused, in ONNX Runtime (the --onnx
    spelling)."""
    out = run_tool('analysis/benchmark.py', '--onnx', '--runs', '2',
                   '--warmup', '0', '--sizes', '320')
    rows = table_rows(out.stdout)
    peer = rows['mmdet SSDLite-MobileNetV2 @320 ORT']
    assert '-' not in peer[1:5], peer
    falcon = rows['ssdlite_falcon_coco fused @320 ORT']
    assert 'quartiles x SSDLite-MobileNetV2' in falcon[-1], falcon


def export_form_rows(run_tool, flag, *forms):
    """The table of a quick ONNX Runtime run with a row per export form
    of ``flag`` (``--sfconv-forms`` / ``--parc-forms``)."""
    out = run_tool('analysis/benchmark.py', '--backend', 'onnxruntime', flag,
                   *forms, '--runs', '2', '--warmup', '0', '--sizes', '96',
                   '--no-models')
    return table_rows(out.stdout)


@pytest.mark.slow
def test_benchmark_sfconv_form_rows(run_tool):
    """--sfconv-forms: a row per export form of every model with fused
    SF-Conv pairs, each timed against the first form; other rows once."""
    rows = export_form_rows(run_tool, '--sfconv-forms', 'auto', 'dense')
    auto = rows['FalconNet fused (auto) @96 ORT']
    dense = rows['FalconNet fused (dense) @96 ORT']
    assert 'SF-Conv as auto' in auto[-1] and 'x auto' not in auto[-1]
    assert 'SF-Conv as dense; quartiles x MobileNetV2' in dense[-1], dense
    assert 'x auto' in dense[-1], dense
    # the dense form moves more bytes than the cost rule's
    assert float(dense[3]) > float(auto[3]), (auto, dense)
    assert 'ParC-Net-S os32 fused @96 ORT' in rows


@pytest.mark.slow
def test_benchmark_parc_form_rows(run_tool):
    """--parc-forms: a row per ParC mixer export form of every model with
    fused ParC blocks, each timed against the first form."""
    rows = export_form_rows(run_tool, '--parc-forms', 'merged', 'conv')
    merged = rows['ParC-Net-S os32 fused (merged) @96 ORT']
    conv = rows['ParC-Net-S os32 fused (conv) @96 ORT']
    assert 'ParC mixer as merged' in merged[-1], merged
    assert 'x merged' not in merged[-1], merged
    assert 'ParC mixer as conv' in conv[-1] and 'x merged' in conv[-1]
    # the merged circulants (C x N x N per axis) are weights the conv
    # form does not read
    assert float(conv[3]) < float(merged[3]), (merged, conv)
    assert 'FalconNet fused @96 ORT' in rows


def test_benchmark_refuses_what_does_not_combine(run_tool):
    out = run_tool('analysis/benchmark.py', '--train', '--backend', 'ncnn',
                   ok=False)
    assert '--train runs in PyTorch; got --backend ncnn' in out.stderr
    out = run_tool('analysis/benchmark.py', '--sfconv-forms', 'dense',
                   ok=False)
    assert '--sfconv-forms are export forms: add --backend' in out.stderr
    out = run_tool('analysis/benchmark.py', '--parc-forms', 'conv',
                   ok=False)
    assert '--parc-forms are export forms: add --backend' in out.stderr
    out = run_tool('analysis/benchmark.py', '--compile', ok=False)
    assert '--compile inductor times training steps: add --train' \
        in out.stderr
