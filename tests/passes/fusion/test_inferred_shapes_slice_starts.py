"""_inferred_shapes: a Slice start that is not known is never read as 0.

ONNX's data propagation (onnx 1.23) reads a Slice start it cannot read (a size that is not a number, named or
anonymous, or a graph input's value) as 0, and propagates the slice it would then be. Every case here is
checked against what ONNX Runtime computes, on inputs that give the start several values.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from passes.fusion._inferred_shapes import inferred_shapes
from passes.fusion.gelu import GeluFusion
from tests.helpers import parse_model, run

# Starts of a Slice of the three ones (or of x's shape [2, S, 3]), none a constant: NonZero's count (an
# anonymous dim), x's declared dim S, and a graph input's value.
_STARTS = {
    "nonzero count": "nz = NonZero(a)\n cnt = Shape(nz)\n start = Slice(cnt, i1, i2)",
    "declared dim": "sx0 = Shape(x)\n start = Slice(sx0, i1, i2)",
    "graph input": "start = Identity(w)",
}
_SLICED = {
    "constant": "k = Slice(ones, start, i3)",
    "shape": "sx = Shape(x)\n k = Slice(sx, start, i3)",
}


def _model(starts: str, sliced: str, tail: str = "y = ConstantOfShape<value = float[1] {0.3}>(k)") -> ir.Model:
    model = parse_model(f"""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[4] a, float[2, S, 3] x, int64[1] w) => (float y) {{
          i1 = Constant<value = int64[1] {{1}}>()
          i2 = Constant<value = int64[1] {{2}}>()
          i3 = Constant<value = int64[1] {{3}}>()
          ones = Constant<value = int64[3] {{1, 1, 1}}>()
          {starts}
          {sliced}
          {tail}
        }}""")
    model.graph.outputs[0].shape = None  # the parser declares `float y` rank 0
    return model


def _feeds() -> list[dict[str, np.ndarray]]:
    """Starts 0, 1 and 2 from each source."""
    return [
        {
            "a": np.array([1.0] * count + [0.0] * (4 - count), np.float32),
            "x": np.ones((2, count, 3), np.float32),
            "w": np.array([count], np.int64),
        }
        for count in (0, 1, 2)
    ]


def _holds(shape: ir.Shape | None, array: np.ndarray) -> bool:
    """``shape`` states nothing ``array``'s shape contradicts: no rank, or its rank and its sized dims."""
    if shape is None:
        return True
    return len(shape) == array.ndim and all(not isinstance(d, int) or d == n for d, n in zip(shape, array.shape))


@pytest.mark.parametrize("sliced", sorted(_SLICED))
@pytest.mark.parametrize("source", sorted(_STARTS))
def test_a_slice_at_an_unknown_start_is_not_inferred_as_a_slice_at_0(source, sliced):
    # A review: Slice([1, 1, 1], NonZero's count, [3]) was inferred [1, 1, 1] whatever the count, and so a
    # ConstantOfShape of it rank 3; a start of x's declared dim S read as 0 just the same.
    model = _model(_STARTS[source], _SLICED[sliced])
    with inferred_shapes(model):
        shapes = {value.name: value.shape for node in model.graph for value in node.outputs}
    assert shapes["k"] is not None and shapes["k"].rank() == 1  # what the Slice's own inference gives is kept
    for feeds in _feeds():
        assert _holds(shapes["y"], run(model, feeds)["y"]), (shapes["y"], feeds)


def test_a_slice_at_a_constant_start_still_propagates_its_values():
    model = _model("", _SLICED["shape"].replace("start", "i1"))
    with inferred_shapes(model):
        assert list(model.graph.outputs[0].shape) == [ir.SymbolicDim("S"), 3]


def test_without_data_propagation_a_constant_of_an_unknown_length_has_no_rank():
    # Below opset 15 a lossy Cast turns data propagation off; ONNX then gives a ConstantOfShape of a vector
    # of unknown length no shape at all (not rank 0, which a printout of an empty dim list looked like).
    model = parse_model("""
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[4] a, float[2] b) => (float y, float16 z) {
          i1 = Constant<value = int64[1] {1}>()
          i2 = Constant<value = int64[1] {2}>()
          i3 = Constant<value = int64[1] {3}>()
          ones = Constant<value = int64[3] {1, 1, 1}>()
          nz = NonZero(a)
          cnt = Shape(nz)
          start = Slice(cnt, i1, i2)
          k = Slice(ones, start, i3)
          y = ConstantOfShape<value = float[1] {0.3}>(k)
          z = Cast<to = 10>(b)
        }""")
    model.graph.outputs[0].shape = None
    with inferred_shapes(model):
        assert model.graph.outputs[1].shape is not None  # inference ran
        assert model.graph.outputs[0].shape is None


# GELU of a value of k's shape, its half of shape [1, 1, 1].
_GELU_OF_K = """c = ConstantOfShape<value = float[1] {0.3}>(k)
          h = Relu(c)
          sqrt2 = Constant<value = float {1.4142135}>()
          one = Constant<value = float {1.0}>()
          half = Constant<value = float[1, 1, 1] {0.5}>()
          d = Div(h, sqrt2)
          e = Erf(d)
          b = Add(e, one)
          m = Mul(h, b)
          y = Mul(m, half)"""


@pytest.mark.parametrize("source", sorted(_STARTS))
def test_gelu_is_not_fused_on_a_rank_read_from_an_unknown_start(source):
    # A review: fuse-gelu fused h * 0.5 * (1 + erf(h / sqrt 2)) with a [1, 1, 1] half into Gelu(h), h taken
    # as [1, 1, 1]; for a count of 1 the original's output is [1, 1, 1] and the fused one's [1, 1].
    model = _model(_STARTS[source], _SLICED["constant"], _GELU_OF_K)
    result = GeluFusion()(model.clone())
    for feeds in _feeds():
        expected, actual = run(model, feeds)["y"], run(result.model, feeds)["y"]
        assert actual.shape == expected.shape, (result.refusals, feeds)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
