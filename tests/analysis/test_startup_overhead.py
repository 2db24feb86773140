"""tools/analysis/startup_overhead.py on a small generated COCO layout: the
checks tools/train.py adds cost a small part of mmdet's dataset build (a
second build, as the checks once did, would cost all of it)."""
import re

import pytest


@pytest.mark.slow
def test_checks_cost_a_small_part_of_the_build(run_tool):
    out = run_tool('analysis/startup_overhead.py', '--train-images', '3000',
                   '--val-images', '300')
    assert 'train: 3000 images' in out.stdout
    share = re.search(r"added by tools/train.py's checks: [0-9.]+ s "
                      r'\(([0-9.]+)% of the build\)', out.stdout)
    assert share, out.log[-2000:]
    assert float(share[1]) < 25, out.stdout
