"""Review s79 (late79f): the float noise floor past its cap (``Verifier._noise_rows``), reviewed late.

Since review s79 xseg a row keeps, once, what ONNX Runtime's own load-time rewrites moved it by, past the cap (1 % of
the output's RMS): a segmenter's generated sample moved a few boundary pixels that far, and an exact fold that moved
them less was rolled back. But where a generated set drives a model chaotic in *every* row, every row was loosened
to its own noise and the whole output went unchecked on that set: a gain 3 % off on the output verified on every set
(before, the cap rolled it back), and is 3 % off on the calm inputs a user feeds. Fixed: a row keeps its own noise
only where such rows are a minority of the output's rows; where most are, the cap holds as before.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import optimize_with_rewrite

_WIDTH = 256
_STEPS = 60


def _layer_norm(source: str, target: str, tag: str, gamma: str, beta: str) -> list[onnx.NodeProto]:
    # Written out, so that ONNX Runtime's LayerNormFusion rounds it otherwise than the original runs it.
    return [
        helper.make_node("ReduceMean", [source], [f"mean_{tag}"], axes=[-1]),
        helper.make_node("Sub", [source, f"mean_{tag}"], [f"centred_{tag}"]),
        helper.make_node("Pow", [f"centred_{tag}", "two"], [f"square_{tag}"]),
        helper.make_node("ReduceMean", [f"square_{tag}"], [f"variance_{tag}"], axes=[-1]),
        helper.make_node("Add", [f"variance_{tag}", "epsilon"], [f"shifted_{tag}"]),
        helper.make_node("Sqrt", [f"shifted_{tag}"], [f"deviation_{tag}"]),
        helper.make_node("Div", [f"centred_{tag}", f"deviation_{tag}"], [f"normal_{tag}"]),
        helper.make_node("Mul", [f"normal_{tag}", gamma], [f"scaled_{tag}"]),
        helper.make_node("Add", [f"scaled_{tag}", beta], [target]),
    ]


def _chaotic_on_generated_inputs() -> onnx.ModelProto:
    """Two written-out LayerNorms (over each row, then over each column: every row then differs by a rounding under
    ONNX Runtime's fusion) start a logistic map ``y <- r y (1 - y)`` whose rate is ``3.99 sigmoid(20 (x - 0.5))``:
    chaotic where the input is well above 0.5 (a normal draw, in every row), calm on an image's pixels (0.5 +- 0.02),
    where ONNX Runtime's rewrites move it by 2e-7."""
    constants = {
        "two": np.array(2.0, np.float32),
        "epsilon": np.array(1e-5, np.float32),
        "gamma": np.ones(_WIDTH, np.float32),
        "beta": np.zeros(_WIDTH, np.float32),
        "one": np.array(1.0, np.float32),
        "zero": np.array(0.0, np.float32),
        "middle": np.array(0.5, np.float32),
        "steepness": np.array(20.0, np.float32),
        "most": np.array(3.99, np.float32),
    }
    nodes = [
        *_layer_norm("x", "rows", "rows", "gamma", "beta"),
        helper.make_node("Transpose", ["rows"], ["columns_in"], perm=[0, 2, 1]),
        *_layer_norm("columns_in", "columns", "columns", "one", "zero"),
        helper.make_node("Transpose", ["columns"], ["normal"], perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["normal"], ["y0"]),
        helper.make_node("Sub", ["x", "middle"], ["offset"]),
        helper.make_node("Mul", ["offset", "steepness"], ["steep"]),
        helper.make_node("Sigmoid", ["steep"], ["share"]),
        helper.make_node("Mul", ["share", "most"], ["rate"]),
    ]
    for step in range(_STEPS):
        nodes += [
            helper.make_node("Sub", ["one", f"y{step}"], [f"rest{step}"]),
            helper.make_node("Mul", [f"y{step}", f"rest{step}"], [f"product{step}"]),
            helper.make_node("Mul", [f"product{step}", "rate"], [f"y{step + 1}"]),
        ]
    nodes.append(helper.make_node("Identity", [f"y{_STEPS}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chaotic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", _WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", _WIDTH])],
        [numpy_helper.from_array(array, name) for name, array in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _output_gain_3_percent_off(model: ir.Model) -> None:
    output = model.graph.outputs[0]
    last = output.producer()
    gain = ir.Value(name="wrong_gain", const_value=ir.tensor(np.array(1.03, np.float32)))
    model.graph.register_initializer(gain)
    wrong = ir.node("Mul", [last.inputs[0], gain])
    model.graph.insert_before(last, wrong)
    last.replace_input_with(0, wrong.outputs[0])


def test_a_gain_3_percent_off_is_not_hidden_by_a_generated_set_chaotic_in_every_row(tmp_path):
    # Every row of each generated set moved by 0.3 to 0.9 under ONNX Runtime's own rewrites (the output's RMS is
    # 0.35): each kept that much, so the gain's 0.03 passed everywhere, and the segment check was never reached.
    model = _chaotic_on_generated_inputs()
    pixels = {"x": (0.5 + 0.02 * np.random.default_rng(0).standard_normal((1, 8, _WIDTH))).astype(np.float32)}
    original = ir.serde.deserialize_model(model)
    wrong = original.clone()
    _output_gain_3_percent_off(wrong)
    from optimizer.runtime import run_model

    calm, off = run_model(original, pixels)["y"], run_model(wrong, pixels)["y"]
    assert np.abs(off - calm).max() > 0.01  # wrong on the inputs a user feeds
    record = optimize_with_rewrite(model, _output_gain_3_percent_off, tmp_path).passes[-1]
    assert record.status == "rolled back", record
