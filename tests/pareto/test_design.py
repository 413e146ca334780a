import json
import random

from edgeskip.models import macs
from edgeskip.pareto import SharedPrefixEvaluator, evaluate_skip_arrays
from edgeskip.pareto.design import design_space, write_design
from edgeskip.pareto.front import Point, dominates
from edgeskip.pareto.latency import TorchLatency, interleaved_median
from edgeskip.pareto.ranking import single_skip_arrays
from edgeskip.pareto.search import GREEDY
from edgeskip.train import evaluate


def test_shared_prefix_equals_separate_runs(tiny_model, digits_splits):
    s = digits_splits
    g = tiny_model.cfg.num_gates
    rng = random.Random(0)
    arrays = [None, *single_skip_arrays(g)] + [tuple(rng.random() < 0.5 for _ in range(g)) for _ in range(6)]
    shared = evaluate_skip_arrays(tiny_model, s.val, s.norm, arrays, batch_size=64)
    separate = [evaluate(tiny_model, s.val, s.norm, a, batch_size=64) for a in arrays]
    assert shared == separate
    ev = SharedPrefixEvaluator(tiny_model, [None, *single_skip_arrays(g)])
    # sensitivity list: the full network once, plus for each gate only the blocks after it
    nb = tiny_model.cfg.num_blocks
    assert ev.naive_block_runs == nb + g * (nb - 1)
    assert ev.shared_block_runs == nb + sum(nb - 1 - b for b in tiny_model.cfg.gated_blocks)


def test_design_space_on_trained_model(tiny_model, digits_splits, tmp_path):
    sens, front = design_space(
        tiny_model, digits_splits, "digits", latency=TorchLatency(tiny_model, repeats=3), search=GREEDY
    )
    g = tiny_model.cfg.num_gates
    # sensitivity: ranked least important first = highest accuracy when skipped alone
    alone = [b["accuracy_when_skipped"] for b in sens["blocks"]]
    order = sens["rankings"]["sensitivity"]
    assert sorted(order) == list(range(g))
    assert [alone[k] for k in order] == sorted(alone, reverse=True)
    assert set(sens["rankings"]) == {"sensitivity", "weight_l2", "random"}
    for curve in sens["curves"].values():
        assert [r["n_skipped"] for r in curve] == list(range(g + 1))

    cands = front["candidates"]
    assert len(cands) == g + 1 and front["cost"] == "latency_s" and front["latency_source"] == "torch-cpu-b1"
    configs = front["configs"]
    # row 0 is the full model
    assert configs[0]["n_skipped"] == 0 and configs[0]["skip"] == [1] * g and configs[0]["index"] == 0
    assert configs[0]["val_accuracy"] == sens["full_val_accuracy"]
    assert configs[0]["macs"] == macs(tiny_model.cfg)
    # sorted by skipped blocks; each config's MACs match the cost model for its skip array
    assert [c["n_skipped"] for c in configs] == sorted(c["n_skipped"] for c in configs)
    assert all(c["macs"] == macs(tiny_model.cfg, c["skip"]) for c in configs)
    # non-dominated: no candidate dominates a config on the front (the anchor row 0 aside)
    pts = [Point(c["val_accuracy"], c["latency_s"], c["n_skipped"]) for c in cands]
    for c in configs[1:]:
        me = Point(c["val_accuracy"], c["latency_s"], c["n_skipped"])
        assert not any(dominates(p, me) for p in pts)
    # every dropped candidate is dominated by some candidate
    kept = {c["n_skipped"] for c in configs}
    for c in cands:
        if c["n_skipped"] not in kept:
            me = Point(c["val_accuracy"], c["latency_s"], c["n_skipped"])
            assert any(dominates(p, me) for p in pts)

    paths = write_design(tmp_path, sens, front)
    assert [p.name for p in paths] == ["sensitivity.json", "pareto.json", "pareto.png"]
    doc = json.loads((tmp_path / "pareto.json").read_text())
    assert (
        doc["format"] == "edgeskip-pareto"
        and doc["version"] == 1
        and doc["gated_blocks"] == list(tiny_model.cfg.gated_blocks)
    )
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_interleaved_median_with_injected_clock():
    ticks = iter(range(1000))
    log = []
    runners = [lambda: log.append("a"), lambda: log.append("b")]
    med = interleaved_median(runners, repeats=3, warmup=1, clock=lambda: float(next(ticks)))
    assert log == ["a", "b"] * 4  # round-robin, warm-up included
    assert med == [1.0, 1.0]


def test_latency_falls_with_skipping(tiny_model):
    g = tiny_model.cfg.num_gates
    full, none = TorchLatency(tiny_model, repeats=15).measure([[1] * g, [0] * g])
    assert none < full  # 9 blocks vs 3 blocks, measured side by side
