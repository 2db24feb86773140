"""Every deploy backend (mmfalcon.deployment.backends) over the demo models:
fp32 exact, reduced precisions measured and named, clear errors for a
missing package, an unsupported precision, an op the runtime cannot take
and a shape the model cannot take; tools/deployment/export.py."""
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config

from mmfalcon.apis import init_model
from mmfalcon.datasets.synthetic_shapes import make_coco_shapes
from mmfalcon.deployment import TensorForward, calibration_inputs, export_onnx
from mmfalcon.deployment.backends import (BACKENDS, BackendNotInstalledError,
                                          UnsupportedOpError, check_runtime,
                                          export_and_check, get_backend)
from mmfalcon.deployment.input_shape import InputShapeError, check_input_shape
from mmfalcon.deployment.runtime import relative_error
from mmfalcon.engine import save_fused_checkpoint
from mmfalcon.models import fuse_model

SHAPE = (1, 3, 64, 96)  # small, non-square, a multiple of FalconNet's 32
FP32_TOLERANCE = 1e-4
MODELS = ('demo/ssdlite_falcon_shapes.py', 'demo/ssdlite_parcnet_shapes.py',
          'demo/deeplabv3_falcon_shapes.py')
REDUCED = [(name, precision) for name, cls in BACKENDS.items()
           for precision in cls.precisions
           if precision not in ('fp32', 'int8')]
INT8 = [name for name, cls in BACKENDS.items() if 'int8' in cls.precisions]

# One fused model with random BN statistics and its ONNX export per config,
# shared by the backends' tests: the ONNX export is the slow step, and every
# backend converts that same file (Backend.export = export_onnx + convert).
_EXPORTS = {}


def installed(name, precision='fp32'):
    """The backend, or a skip naming the package that is missing."""
    backend = get_backend(name)
    try:
        backend.require(precision)
    except BackendNotInstalledError as exc:
        pytest.skip(f'{name} {precision} is not installed: {exc}')
    return backend


@pytest.fixture
def exported(randomize_bn, config_path, tmp_path_factory):
    """``exported(config)``: ``(fused model, path of its ONNX export at
    SHAPE)``, built once per test session."""

    def get(name):
        if name not in _EXPORTS:
            torch.manual_seed(0)
            model = fuse_model(randomize_bn(init_model(
                config_path(name), None, fuse=False))).eval()
            check_input_shape(model, SHAPE)
            path = str(tmp_path_factory.mktemp('onnx') / 'fp32.onnx')
            export_onnx(model, SHAPE, path)
            _EXPORTS[name] = model, path
        return _EXPORTS[name]

    return get


def converted(backend, exported_model, out, precision='fp32',
              calibration=None):
    """``backend.convert`` of the shared ONNX export, loaded."""
    model, onnx_path = exported_model
    backend.convert(onnx_path, backend.files(out), SHAPE, precision,
                    calibration)
    return backend.load(out, precision)


@pytest.mark.slow
@pytest.mark.parametrize('config', MODELS)
@pytest.mark.parametrize('name', list(BACKENDS))
def test_fp32_is_exact(name, config, exported, tmp_path):
    backend = installed(name)
    model = exported(config)[0]
    runtime = converted(backend, exported(config), str(tmp_path / 'end2end'))
    err = check_runtime(model, runtime, SHAPE)
    assert err < FP32_TOLERANCE, f'{name} {config}: relative error {err}'


@pytest.mark.slow
@pytest.mark.parametrize('name,precision', REDUCED)
def test_reduced_precision_error_is_measured(name, precision, exported,
                                             tmp_path):
    """A reduced precision really runs reduced (an error well above fp32's
    ~1e-6) and stays sane (below 5% of the output scale)."""
    backend = installed(name, precision)
    config = 'demo/ssdlite_falcon_shapes.py'
    runtime = converted(backend, exported(config), str(tmp_path / 'm'),
                        precision)
    err = check_runtime(exported(config)[0], runtime, SHAPE)
    assert 1e-5 < err < 0.05, f'{name} {precision}: {err}'


@pytest.fixture
def det_with_data(tmp_path, config_path):
    """The demo detector's config on 3 generated test images at SHAPE, and
    a fused model of it (initial BN statistics, see test_quantize_onnx)."""
    cfg = Config.fromfile(config_path('demo/ssdlite_falcon_shapes.py'))
    root = make_coco_shapes(str(tmp_path / 'coco'), num_train=1, num_val=3,
                            size=SHAPE[2:], seed=1)
    dataset = cfg.test_dataloader.dataset
    dataset.data_root = root
    cfg.test_evaluator.ann_file = f'{root}/annotations/instances_val.json'
    for transform in dataset.pipeline:
        if transform.type == 'Resize':
            transform.scale = SHAPE[:1:-1]  # (w, h)
    torch.manual_seed(0)
    return cfg, init_model(cfg, None, fuse=True)


@pytest.mark.slow
@pytest.mark.parametrize('name', INT8)
def test_int8_calibrates_on_the_config_data(name, det_with_data, tmp_path):
    backend = installed(name, 'int8')
    model = det_with_data[1]
    result = export_and_check(model, backend, str(tmp_path / 'int8'), SHAPE,
                              'int8', calib_images=2)
    assert result['calibrated'] == 2
    fp32 = export_and_check(model, backend, str(tmp_path / 'fp32'), SHAPE)
    assert fp32['error'] < FP32_TOLERANCE
    # On a test image, INT8 within a few per cent of its fp32 export (8-bit
    # tensors, some 20 quantized layers), but not equal: really quantized.
    image = torch.from_numpy(calibration_inputs(model, SHAPE, 1)[0])
    err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(
        result['runtime'](image), fp32['runtime'](image), strict=True))
    assert 1e-4 < err < 0.1, f'{name} int8 vs fp32: {err}'
    if name == 'openvino':
        assert_narrow_convs_and_adds_stay_float(result['files'][0])


def assert_narrow_convs_and_adds_stay_float(xml):
    """What INT8 slows down in OpenVINO is left in float: FalconNet's
    3-channel stem conv, its grouped 2x2 patch merges (1 input channel per
    group, not depthwise) and the Adds; the pointwise convs are quantized."""
    import openvino as ov
    from mmfalcon.deployment.backends.openvino import narrow_convs
    model = ov.Core().read_model(xml)
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}

    def quantized(op):
        return any(inp.get_source_output().get_node().get_type_name() ==
                   'FakeQuantize' for inp in op.inputs())

    merges = [f'/backbone/stages.{i}/stages.{i}.0/fused/Conv/WithoutBiases'
              for i in (1, 2, 3)]
    narrow = ['/backbone/stem/conv/fused/Conv/WithoutBiases'] + merges
    assert narrow_convs(model) == narrow
    assert not any(quantized(ops[name]) for name in narrow)
    adds = [op for op in ops.values() if op.get_type_name() == 'Add']
    assert adds and not any(quantized(op) for op in adds)
    assert quantized(ops['/backbone/stem/pw_conv/fused/Conv/WithoutBiases'])


@pytest.mark.slow
def test_openvino_fp32_compiles_in_f32(exported, tmp_path):
    """fp32 sets INFERENCE_PRECISION_HINT=f32; where the CPU plugin would
    pick bf16 by default (a BF16 CPU), compiling without it errs more."""
    backend = installed('openvino')
    import openvino as ov
    config = 'demo/ssdlite_falcon_shapes.py'
    out = str(tmp_path / 'end2end')
    runtime = converted(backend, exported(config), out)
    assert runtime.compiled.get_property(
        'INFERENCE_PRECISION_HINT') == ov.Type.f32
    core = ov.Core()
    if core.get_property('CPU', 'INFERENCE_PRECISION_HINT') == ov.Type.f32:
        pytest.skip('this CPU compiles in f32 by default')
    default = core.compile_model(backend.files(out)[0], 'CPU')
    model = exported(config)[0]
    x = torch.randn(SHAPE)
    with torch.no_grad():
        expected = TensorForward(model)(x)
    ours = relative_error(expected, runtime.run(x.numpy()), out)
    theirs = relative_error(expected, list(default(x.numpy()).values()), out)
    assert ours < FP32_TOLERANCE < theirs, (ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize('parc_form', ['conv', 'merged'])
def test_ncnn_exports_parcnet_in_its_measured_form(parc_form, exported,
                                                   tmp_path):
    """Backend.export, the whole path export.py takes: ncnn's own ParC
    form (depthwise convs, no MatMul layer) and the merged one both run
    exactly; the model is the shared fused one, so it stays unchanged."""
    installed('ncnn')
    backend = get_backend('ncnn', parc_form=None if parc_form == 'conv'
                          else parc_form)
    assert backend.parc_form == parc_form
    model = exported('demo/ssdlite_parcnet_shapes.py')[0]
    out = str(tmp_path / 'end2end')
    param = backend.export(model, SHAPE, out)[0]
    with open(param) as f:
        layer_types = {line.split()[0] for line in f.read().splitlines()[2:]}
    assert ('MatMul' in layer_types) == (parc_form == 'merged'), layer_types
    assert check_runtime(model, backend.load(out), SHAPE) < FP32_TOLERANCE


@pytest.mark.parametrize('name', list(BACKENDS))
def test_missing_package_names_the_pip_command(name, monkeypatch):
    cls = BACKENDS[name]
    for precision in ('fp32', 'int8'):
        if precision not in cls.precisions:
            continue
        needed = dict(cls.packages)
        if precision == 'int8':
            needed.update(cls.int8_packages)
        for module in needed:
            with monkeypatch.context() as patch:
                patch.setitem(sys.modules, module, None)  # not installed
                with pytest.raises(BackendNotInstalledError) as info:
                    get_backend(name).require(precision)
            message = str(info.value)
            assert f'needs the package {needed[module]!r}' in message
            assert f'pip install "mmfalcon[{cls.extra}]"' in message
            assert 'pip install ' + ' '.join(needed.values()) in message


def test_unsupported_precision_lists_what_is_supported():
    with pytest.raises(ValueError) as info:
        get_backend('ncnn').check_precision('int8')
    message = str(info.value)
    assert "does not export precision 'int8'" in message
    assert 'it exports fp32, fp16' in message
    for name, cls in BACKENDS.items():
        assert f'{name}: {", ".join(cls.precisions)}' in message
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        get_backend('tensorrt')


def test_output_files_follow_a_prefix():
    assert get_backend('openvino').files('work/end2end') == [
        'work/end2end.xml', 'work/end2end.bin'
    ]
    assert get_backend('ncnn').files('work/end2end.param') == [
        'work/end2end.param', 'work/end2end.bin'
    ]
    assert get_backend('onnxruntime').files('m.v2') == ['m.v2.onnx']
    with pytest.raises(ValueError, match=r"output 'm.onnx': the openvino "
                       r'backend writes .xml \+ .bin files'):
        get_backend('openvino').files('m.onnx')
    with pytest.raises(ValueError, match='pass a path prefix'):
        get_backend('ncnn').files('work/')


def _graph_with(tmp_path, op_type, domain=''):
    """A 1x3x8x8 ONNX graph: Relu, then one ``op_type`` node named like an
    exported layer."""
    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper
    nodes = [
        helper.make_node('Relu', ['input'], ['hidden'],
                         name='/backbone/stem/Relu'),
        helper.make_node(op_type, ['hidden'], ['output0'], domain=domain,
                         name=f'/backbone/stages.0/mixer/{op_type}')
    ]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT,
                                           [1, 3, 8, 8])
             for n in ('input', 'output0')]
    opsets = [helper.make_opsetid('', 17)] + (
        [helper.make_opsetid(domain, 1)] if domain else [])
    graph = helper.make_graph(nodes, 'g', value[:1], value[1:])
    path = str(tmp_path / f'{op_type}.onnx')
    # IR version 8, as torch.onnx writes for opset 17
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8),
              path)
    return path


# An op each runtime lacks: a custom-domain op, and for ncnn also a
# standard ONNX op pnnx passes on unconverted.
UNSUPPORTED = [(name, 'Frobnicate', 'com.example') for name in BACKENDS
               ] + [('ncnn', 'Hardmax', '')]


@pytest.mark.parametrize('name,op_type,domain', UNSUPPORTED)
def test_unsupported_op_is_named_with_its_layer(name, op_type, domain,
                                                tmp_path):
    backend = installed(name)
    path = _graph_with(tmp_path, op_type, domain)
    with pytest.raises(UnsupportedOpError) as info:
        backend.convert(path, backend.files(str(tmp_path / 'out')),
                        (1, 3, 8, 8), 'fp32', None)
    message = str(info.value)
    assert 'cannot take the op' in message
    assert f'{op_type} (/backbone/stages.0/mixer/{op_type})' in message


@pytest.fixture(scope='module')
def falcon_det(config_path):
    return init_model(config_path('demo/ssdlite_falcon_shapes.py'), None,
                      fuse=True)


def test_bad_shapes_are_named(falcon_det):
    # FalconNet merges 2x2 patches with stride 2: an odd size drops a row
    with pytest.raises(InputShapeError) as info:
        check_input_shape(falcon_det, (1, 3, 65, 96))
    message = str(info.value)
    assert message.startswith('input shape (1, 3, 65, 96): backbone.')
    assert 'reads 1 of its last rows not at all (kernel 2, stride 2' in message
    assert 'the nearest sizes it takes whole: 64x96 or 96x96' in message
    for size in ((64, 96), (96, 96)):  # the suggestions are taken
        check_input_shape(falcon_det, (1, 3) + size)
    with pytest.raises(InputShapeError,
                       match=r'gets a 1x1 input and needs at least 2 pixels'):
        check_input_shape(falcon_det, (1, 3, 16, 16))
    with pytest.raises(InputShapeError, match='positive sizes'):
        check_input_shape(falcon_det, (1, 3, 0, 64))
    falcon_det.data_preprocessor.pad_size_divisor = 64
    try:
        with pytest.raises(InputShapeError,
                           match=r'\(1, 3, 64, 96\): the data preprocessor '
                           r'pads test images to multiples of 64 '
                           r'\(pad_size_divisor=64\)'):
            check_input_shape(falcon_det, SHAPE)
    finally:
        falcon_det.data_preprocessor.pad_size_divisor = 1


def test_a_failing_layer_is_named(falcon_det):
    with pytest.raises(InputShapeError,
                       match=r'\(1, 4, 64, 96\): the model cannot take it: '
                       r'backbone.stem.* failed on an input of shape '
                       r'\(1, 4, 64, 96\)'):
        check_input_shape(falcon_det, (1, 4, 64, 96))


def mmdet_config(name):
    import mmdet
    return osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', name)


@pytest.mark.slow
def test_export_tool_on_mmdets_own_config(tmp_path, run_tool):
    """mmdet's SSDLite-MobileNetV2 (a training checkpoint of a freshly
    built model) exports to ncnn, exact in fp32."""
    installed('ncnn')
    config = mmdet_config('ssd/ssdlite_mobilenetv2-scratch_8xb24-600e_coco.py')
    ckpt = str(tmp_path / 'random.pth')
    torch.save(dict(state_dict=init_model(config, None, fuse=False)
                    .state_dict()), ckpt)
    out = run_tool('deployment/export.py', config, ckpt, tmp_path / 'end2end',
                   '--backend', 'ncnn', '--shape', '64', '96')
    assert (tmp_path / 'end2end.param').is_file()
    assert (tmp_path / 'end2end.bin').is_file()
    assert 'Exported ' in out.stdout and '(ncnn fp32), input [1, 3, 64, 96]' \
        in out.stdout
    assert 'relative error ncnn fp32 vs PyTorch fp32: ' in out.stdout
    assert '(tolerance 0.0001)' in out.stdout


@pytest.fixture
def fused_ckpt(tmp_path, config_path, randomize_bn):
    config = config_path('demo/ssdlite_falcon_shapes.py')
    ckpt = str(tmp_path / 'fused.pth')
    torch.manual_seed(0)
    save_fused_checkpoint(fuse_model(randomize_bn(init_model(
        config, None, fuse=False))).eval(), ckpt)
    return config, ckpt


@pytest.mark.slow
def test_export_tool_reports_and_enforces_the_error(fused_ckpt, tmp_path,
                                                    run_tool):
    installed('openvino')
    config, ckpt = fused_ckpt
    out = run_tool('deployment/export.py', config, ckpt, tmp_path / 'bf16',
                   '--backend', 'openvino', '--precision', 'bf16', '--shape',
                   '64', '96')
    assert 'relative error openvino bf16 vs PyTorch fp32: ' in out.stdout
    assert 'bf16 is a reduced precision: no tolerance' in out.stdout
    # float32 rounding differs somewhere, so a 1e-12 tolerance fails cleanly
    out = run_tool('deployment/export.py', config, ckpt, tmp_path / 'fp32',
                   '--backend', 'openvino', '--shape', '64', '96',
                   '--tolerance', '1e-12', ok=False)
    assert 'openvino fp32 check failed: relative error' in out.stderr
    assert '> tolerance 1e-12' in out.stderr
    assert 'Traceback' not in out.stderr


@pytest.mark.slow
def test_export_tool_bad_shape(fused_ckpt, tmp_path, run_tool):
    config, ckpt = fused_ckpt
    out = run_tool('deployment/export.py', config, ckpt, tmp_path / 'm',
                   '--backend', 'onnxruntime', '--shape', '65', '96',
                   ok=False)
    assert 'input shape (1, 3, 65, 96): backbone.' in out.stderr
    assert 'Traceback' not in out.stderr


@pytest.mark.slow
def test_mmfalcon_imports_without_the_runtimes():
    """The runtime packages are optional: mmfalcon and its backends import
    without them, and importing loads none of them."""
    import subprocess
    runtimes = ('openvino', 'nncf', 'ncnn', 'pnnx')
    code = '; '.join(
        ['import sys'] + [f'sys.modules[{m!r}] = None' for m in runtimes] + [
            'import mmfalcon, mmfalcon.deployment.backends',
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            f'{runtimes!r} and sys.modules[m] is not None))'
        ])
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[]'


@pytest.mark.slow
def test_export_tool_int8_latency_and_evaluation(det_with_data, tmp_path,
                                                 run_tool):
    """INT8 calibrated on the config's test images, timed against the same
    runtime's fp32 export and evaluated beside it."""
    cfg, model = det_with_data
    cfg_file, ckpt = str(tmp_path / 'small.py'), str(tmp_path / 'fused.pth')
    cfg.dump(cfg_file)
    save_fused_checkpoint(model, ckpt)
    out = run_tool('deployment/export.py', cfg_file, ckpt, tmp_path / 'int8',
                   '--backend', 'onnxruntime', '--precision', 'int8',
                   '--calib-images', '2', '--latency', '3', '--evaluate')
    assert 'calibrated on 2 test images' in out.stdout
    assert 'int8 is a reduced precision: no tolerance' in out.stdout
    assert ('3 interleaved rounds (median ms; median per-round ratio to '
            'onnxruntime fp32') in out.stdout
    assert '  onnxruntime int8: ' in out.stdout
    for name in ('onnxruntime fp32', 'onnxruntime int8'):
        assert f'{name} on the test set: coco/bbox_mAP: ' in out.stdout
