# The wire benchmark runs and keeps its ordering: the link sends far less than the naive design.
from tukar_tools import bench_mqtt


def test_bench_link_sends_far_less_than_republishing_every_value_every_10_s():
    r = bench_mqtt.measure(0.1)
    assert r["per_day"] * 10 < r["naive_per_day"]
    assert 1000 < r["per_swap"] < 20000
