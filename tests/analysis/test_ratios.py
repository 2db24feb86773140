"""Ratios of interleaved timings: the median of per-round ratios, its
quartiles inside what was observed, and the table that prints them."""
from mmfalcon.analysis import BenchmarkRow, format_table, ratio_spread


def test_ratio_is_the_median_of_per_round_ratios():
    times = dict(a=[2., 4., 9.], b=[1., 1., 3.])
    # per round 2, 4, 3: not the ratio of the medians (4 / 1)
    mid, low, high = ratio_spread(times, 'a', 'b')
    assert mid == 3.
    assert (low, high) == (2.5, 3.5)


def test_quartiles_of_two_rounds_stay_within_them():
    """The default ('exclusive') quartiles extrapolate below the smallest
    ratio for few rounds, even below zero."""
    times = dict(a=[1., 30.], b=[1., 1.])
    mid, low, high = ratio_spread(times, 'a', 'b')
    assert 1. <= low <= mid <= high <= 30.


def test_traffic_column_only_where_measured():
    rows = [BenchmarkRow('m', params=10**6, flops=2 * 10**9, latency_ms=3.)]
    assert 'MB moved' not in format_table(rows)
    rows[0].traffic_mb = 12.34
    table = format_table(rows, markdown=True).splitlines()
    assert table[0].startswith('| model | params (M) | FLOPs (G) | MB moved')
    assert table[2].startswith('| m | 1.000 | 2.000 | 12.3 | 3.00 |')
