"""The flags tools/deployment/export.py and quantize_onnx.py share through
``mmfalcon.engine.cli``: ``--calib-images`` (checked when parsed, before a
model is built), ``--evaluate`` / ``--limit``, and how the test-set
metrics are printed."""
import importlib.util
import os.path as osp

import numpy as np
import pytest

from mmfalcon.engine.cli import print_test_metrics

# each tool with the arguments it needs besides the shared flags
TOOLS = {
    'export.py': ['--backend', 'onnxruntime'],
    'quantize_onnx.py': [],
}


@pytest.fixture(params=sorted(TOOLS))
def parse(request, repo_root, monkeypatch):
    """``parse(*flags)``: the tool's own ``parse_args`` on
    ``CONFIG CHECKPOINT OUT *flags``."""
    path = osp.join(repo_root, 'tools', 'deployment', request.param)
    spec = importlib.util.spec_from_file_location(
        f'tool_{osp.splitext(request.param)[0]}', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # main() runs only as __main__

    def run(*flags):
        monkeypatch.setattr('sys.argv', [
            request.param, 'cfg.py', 'model.pth', 'out', *TOOLS[request.param],
            *flags])
        return tool.parse_args()

    return run


def test_shared_flag_defaults(parse):
    args = parse()
    assert (args.calib_images, args.evaluate, args.limit) == (32, False, None)
    args = parse('--calib-images', '2', '--evaluate', '--limit', '5')
    assert (args.calib_images, args.evaluate, args.limit) == (2, True, 5)


@pytest.mark.parametrize('count', ['0', '-3'])
def test_calib_images_below_one_is_a_usage_error(parse, count, capsys):
    with pytest.raises(SystemExit) as exc:
        parse('--calib-images', count)
    assert exc.value.code == 2  # argparse's usage error, no traceback
    assert ('--calib-images: the number of calibration images must be >= 1, '
            f'got {count}') in capsys.readouterr().err


def test_print_test_metrics(capsys):
    # mmseg's metrics are numpy scalars, mmdet's floats; the rest is skipped
    print_test_metrics('int8', {'mIoU': np.float32(71.25), 'mAcc': 80.5,
                                'coco/bbox_mAP_copypaste': '0.1 0.2'})
    assert capsys.readouterr().out == (
        'int8 on the test set: mIoU: 71.2500, mAcc: 80.5000\n')
