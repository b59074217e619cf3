"""fuse-bias-gelu: a constant bias Add before Gelu/FastGelu folded into BiasGelu/FastGelu."""

from __future__ import annotations

import numpy as np
import pytest

from passes.fusion.bias_gelu import BiasGeluFusion
from tests.helpers import assert_same_outputs, computed_op_types, parse_model

_TEXT = """
    <ir_version: 9, opset_import: ["" : 18, "com.microsoft" : 1]>
    g (float[N, 4] x) => (float[N, 4] y) {{
      bias = Constant<value = float{shape} {values}>()
      a = Add(bias, x)
      y = com.microsoft.{op}(a)
    }}"""


@pytest.mark.parametrize(("op", "fused"), [("Gelu", "BiasGelu"), ("FastGelu", "FastGelu")])
def test_bias_is_folded(op, fused):
    model = parse_model(_TEXT.format(shape="[4]", values="{0.1, -0.2, 0.3, 0.5}", op=op))
    after = BiasGeluFusion()(model.clone()).model
    assert computed_op_types(after) == [fused]
    assert len(list(after.graph)[-1].inputs) == 2
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    assert_same_outputs(model, after, {"x": x}, rtol=1e-5, atol=1e-6)


def test_bias_that_is_not_a_vector_is_left_alone():
    model = parse_model(_TEXT.format(shape="[3, 4]", values="{" + ", ".join(["0.1"] * 12) + "}", op="Gelu"))
    assert not BiasGeluFusion()(model).modified
