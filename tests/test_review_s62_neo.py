"""Review (s62, GPT-Neo's dynamo export with a cache): its local layer's present is declared as an expression.

The dynamo exporter declares GPT-Neo's local (sliding-window) layer's present
``past_sequence + Max(0, -past_sequence + Min(128, past_sequence + sequence))`` (the slice of its 128-row band
table), the global layer's ``past_sequence + sequence``. Verification then did not know the logits for the mask's
tail and compared them at right-padded new tokens whose 16-token window holds only padding, where the fused
kernel returns something else than the exporter's softmax: a correct ``fuse-attention`` (bit-exact on every real
token) was rolled back ("output 'logits': max abs error 0.0237 ... second binding ... row 2's last 16 of 66
positions padded"), and ``fuse-group-query-attention`` never ran.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from tests.helpers import FIXTURES
from tests.test_verification_holes import logits_plus_one_where

WINDOW_PRESENT = "past_sequence + Max(0, -past_sequence + Min(128, past_sequence + sequence))"


def _declared(proto: onnx.ModelProto, layer: int, length: str) -> onnx.ModelProto:
    """``proto`` with layer ``layer``'s present key and value declared ``length`` long."""
    for output in proto.graph.output:
        if output.name in (f"present.{layer}.key", f"present.{layer}.value"):
            output.type.tensor_type.shape.dim[2].dim_param = length
    return proto


def test_a_window_layers_present_declared_as_an_expression_keeps_the_logits_the_masks_tail():
    from optimizer.padding import new_token_outputs

    proto = _declared(onnx.load(FIXTURES / "llama_kv_dynamo.onnx"), 1, WINDOW_PRESENT)
    layout = new_token_outputs(ir.from_proto(proto))
    assert layout is not None and layout.outputs == {"logits"}
    # Near misses: a length of another dim, or a name that is no expression of the past and the new tokens.
    for other in ("encoder_sequence + Max(0, -past_sequence + Min(128, past_sequence + sequence))", "window"):
        proto = _declared(onnx.load(FIXTURES / "llama_kv_dynamo.onnx"), 1, other)
        assert new_token_outputs(ir.from_proto(proto)) is None, other


@pytest.mark.parametrize("padded", [True, False])
def test_a_dynamo_window_decoder_step_is_judged_on_its_real_new_tokens_only(padded):
    from optimizer.inputs import make_inputs
    from optimizer.verify import Verifier

    proto = _declared(onnx.load(FIXTURES / "llama_kv_dynamo.onnx"), 1, WINDOW_PRESENT)
    model = ir.from_proto(proto)
    inputs = make_inputs(model, {"batch": 2, "sequence": 3, "past_sequence": 5, "total_sequence": 8})
    mask = np.ones((2, 8), dtype=np.int64)
    mask[1, -2:] = 0  # row 2's last two new tokens padded on the right
    mask[0, :2] = 0  # row 1's start padded on the left
    inputs["attention_mask"] = mask
    verifier = Verifier(model, [inputs], labels=["given"])
    assert verifier.check(logits_plus_one_where(padded, proto)).ok is padded
