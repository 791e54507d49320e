"""bench/craft_routing.py replays CRAFT's stage 1 without training: its grouping must be the method's own."""
import torch
from conftest import bench_script

from methods.craft import kl


def signature(probs):
    return torch.tensor(probs, dtype=torch.float).log()


def test_routing_joins_the_nearest_group_under_the_threshold_and_keeps_its_mean_signature():
    route = bench_script("craft_routing").route
    sigs = {"a": signature([0.7, 0.2, 0.1]), "b": signature([0.6, 0.3, 0.1]), "c": signature([0.05, 0.05, 0.9])}
    near, far = float(kl(sigs["b"], sigs["a"])), float(kl(sigs["c"], sigs["a"]))
    assert near < 0.1 < 1.0 < far   # the planted geometry the thresholds below rely on

    decisions = route(sigs, ["a", "b", "c"], threshold=0.1)
    assert [g for _, g, _ in decisions] == [0, 0, 1]
    assert decisions[1][2] == {0: near}
    # c is compared with group 0's signature, the mean of a's and b's distributions (as craft's Group keeps it)
    mean = signature([0.65, 0.25, 0.1])
    assert abs(decisions[2][2][0] - float(kl(sigs["c"], mean))) < 1e-5

    assert [g for _, g, _ in route(sigs, ["a", "b", "c"], threshold=far + 1)] == [0, 0, 0]
    assert [g for _, g, _ in route(sigs, ["a", "b", "c"], threshold=near / 2)] == [0, 1, 2]
