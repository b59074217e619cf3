"""Hostile review (s65, late1) of the changes landed on 2026-12-06 (2ce6416..7649168): verification's sets run in one
session, the one-row decode step, thread counts from the cgroup CPU quota, p99 under 100 pairs, ``compare
--profile``'s warm-up and subgraph times, held-out rows of pads, and the int4 review's Gemm-without-C rule.

Findings:
1. ``factorize-lowrank`` crashed (``ValueError: a missing input is not a constant``, the pass failed and the layer
   stayed whole) on a Gemm whose C is written and left empty (``Gemm(x, W, "")``, a valid ONNX spelling that
   ``find_layers`` takes for a Gemm without C) wherever the repair stored a bias change: ``_store_bias`` read the
   empty input as a constant. Fixed: an empty C is none, and the new C sets beta to 1 as for a Gemm of two inputs.
2. ``prune-*``'s repair took a Gemm without C that states a beta other than 1 for a scaled Gemm it cannot re-fit
   (``_refittable`` read beta whatever C), so the pruned layer went unrepaired: the rule today's int4 review fixed
   in ``passes._layers`` (beta scales C alone) was not applied there. Fixed, and a C the repair adds to such a
   Gemm sets its beta to 1 (``_bias``'s ``store_gemm``), as ``fold_into_bias`` does for the twin.
3. ``optimizer.cores`` asked ``Path.is_dir`` about cgroup folders named by ``/proc/self/cgroup``; on Python 3.11 it
   raises ``PermissionError`` (not False) where a folder above may not be searched, and the quota is read by every
   session's options (``runtime._quota_threads``) and compare's default ``--threads``: a traceback, not the
   affinity. Fixed: such a folder is one that cannot be read.
4. ``Verifier._float_noises`` (today's one session for every pending set) kept every set's ORT_ENABLE_ALL outputs
   until the last set had run, where one set's were alive before (a decoder's logits and caches: hundreds of MB a
   set). Fixed: each set's outputs are reduced to its noise as it comes.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from optimizer import cores
from passes.factorization.lowrank import LowRankFactorizationPass
from passes.pruning.ffn import FfnPruningPass
from tests.helpers import FIXTURES
from tests.passes.factorization import graphs
from tests.passes.factorization.graphs import FakeSpeed
from tests.passes.pruning.twins import assert_matches_twin

# 1. lowrank's repair on a Gemm whose C is written empty


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_lowrank_repairs_a_gemm_whose_c_is_left_empty(beta):
    model = graphs.gemm()
    gemm = next(iter(model.graph))
    gemm.replace_input_with(2, None)  # Gemm(x, W, ""): C written, left empty
    gemm.attributes["beta"] = ir.AttrFloat32("beta", beta)
    x = graphs.inputs(128, shape=(64,))
    result = LowRankFactorizationPass(0.7, speed=FakeSpeed(), importance="magnitude", samples={"x": x})(model)
    assert any("after repair" in note for note in result.notes), result.notes
    gemm = next(node for node in result.model.graph if node.op_type == "Gemm")
    assert gemm.inputs[2] is not None and gemm.attributes.get_float("beta", 1.0) == 1.0
    assert_matches_twin(result, {"x": x[:8]})


# 2. pruning's repair on a Gemm without C whatever its beta


def _ffn_with_gemm_down(beta: float, hidden: int = 16, inner: int = 32) -> ir.Model:
    """``x [B, hidden]`` → MatMul up + bias → Relu → ``Gemm(h, down, beta=beta)`` without C → residual Add."""
    rng = np.random.default_rng(0)
    weights = {
        "up": rng.standard_normal((hidden, inner)) / 4,
        "up_bias": rng.standard_normal(inner) * 0.1,
        "down": rng.standard_normal((inner, hidden)) / 6,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "up"], ["u"], name="up_proj"),
        helper.make_node("Add", ["u", "up_bias"], ["ub"], name="up_bias_add"),
        helper.make_node("Relu", ["ub"], ["h"], name="relu"),
        helper.make_node("Gemm", ["h", "down"], ["o"], name="down_proj", beta=beta),
        helper.make_node("Add", ["o", "x"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", 1, ["B", hidden])],
        [helper.make_tensor_value_info("y", 1, ["B", hidden])],
        [numpy_helper.from_array(np.asarray(value, np.float32), name) for name, value in weights.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def test_pruning_repairs_a_gemm_without_c_whatever_its_beta():
    x = np.random.default_rng(1).standard_normal((256, 16)).astype(np.float32)
    pruning = FfnPruningPass(0.25, samples={"x": x})
    result = pruning(_ffn_with_gemm_down(beta=0.5))
    assert pruning.pruned == {"down_proj": (24, 32)}
    assert any("after repair" in note for note in result.notes), result.notes
    gemm = result.model.graph.node("down_proj")
    assert gemm.inputs[2] is not None and gemm.attributes.get_float("beta", 1.0) == 1.0  # the repaired C unscaled
    assert_matches_twin(result, {"x": x[:8]})


# 3. a cgroup folder this process may not search


def test_a_cgroup_folder_that_may_not_be_searched_is_not_a_traceback(tmp_path, monkeypatch):
    root = tmp_path / "cg"
    (root / "kube").mkdir(parents=True)
    (root / "cpu.max").write_text("300000 100000\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/kube/pod/container\n")
    is_dir = Path.is_dir

    def searched(path: Path) -> bool:
        if path.is_relative_to(root / "kube"):  # as Python 3.11 answers where kube/ is mode 0700, for another user
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return is_dir(path)

    monkeypatch.setattr(Path, "is_dir", searched)
    monkeypatch.setattr(cores, "affinity_cores", lambda: 8)
    assert cores.cgroup_cpu_quota(root, self_cgroup) == 3.0
    assert cores.usable_cores(root, self_cgroup) == 3


# 4. the float noise's one session holds one set's outputs at a time


def test_the_float_noise_of_many_sets_holds_one_sets_outputs_at_a_time(monkeypatch):
    """Measured in one session, every pending set's ORT_ENABLE_ALL outputs (a decoder's logits and caches, hundreds of
    MB a set) were kept until the last set had run, where one set's were before: each is reduced to its noise as it
    comes."""
    from optimizer import verify

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"]), helper.make_node("Tanh", ["rows"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", 7, ["B"])],
        [helper.make_tensor_value_info("y", 1, None)],
        [table],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    sets = [{"ids": np.arange(count) % 10} for count in range(1, 7)]
    verifier = verify.Verifier(model, sets, None)
    live, most = [0], [0]

    class Outputs(dict):
        def __init__(self, *args):
            super().__init__(*args)
            live[0] += 1
            most[0] = max(most[0], live[0])

        def __del__(self):
            live[0] -= 1

    run_session = verify.run_session
    monkeypatch.setattr(verify, "run_session", lambda session, inputs: Outputs(run_session(session, inputs)))
    assert len(verifier.noise) == 6
    assert most[0] <= 2, f"{most[0]} sets' outputs held at once"


def test_a_large_model_shares_no_session_of_the_original(monkeypatch):
    """Past the limit, the set builders' own sessions (a decoder's cache built by the model) would open beside a kept
    one: the original's runs open a session each, as before."""
    import optimizer.verify as verify_module
    from optimizer.inputs import make_inputs
    from optimizer.verify import Verifier

    model = ir.load(str(FIXTURES / "llama_kv_legacy.onnx"))
    inputs = make_inputs(model, {"batch": 1, "sequence": 4, "past_sequence": 3}, seed=0)
    verifier = Verifier(model, [inputs])
    with verifier.one_session_of_original():
        verifier.add_input_set(inputs, "again")
        assert verifier._session_of_original is not None  # small: shared
    monkeypatch.setattr(verify_module, "_SHARED_SESSION_BELOW_BYTES", 1)
    with verifier.one_session_of_original():
        verifier.add_input_set(inputs, "once more")
        assert verifier._session_of_original is None
    assert len(verifier.input_sets) == 3
