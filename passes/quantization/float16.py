"""Float16 conversion for GPU targets, with numerically sensitive ops kept in float32.

The conversion itself is onnxruntime's ``transformers.float16.convert_float_to_float16``
(the converter ORT's own transformer optimizer uses); this pass chooses what stays
float32 and keeps the graph's input and output types.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN
from optimizer.protocol import Twin
from passes._pass import GraphoptPass
from passes.quantization._twin import float16_twin

# Kept float32, with Casts at their boundaries: the reductions of decomposed
# normalizations (a sum of squares overflows float16's 65504 quickly), and softmax
# over raw scores. The fused norm and attention ops accumulate in float32 themselves.
SENSITIVE_OPS = ("Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Sqrt", "Softmax", "LogSoftmax")


class Float16Pass(GraphoptPass, ir.passes.FunctionalPass):
    """Convert float32 weights and computation to float16, except ``SENSITIVE_OPS`` and ORT's
    default block list (ops without float16 kernels: TopK, NonMaxSuppression, Range, ...).

    With ``keep_io_types`` (the default) float graph inputs and outputs stay float32,
    with Casts inside the graph. Refuses (unchanged) a model with no float32 tensors
    or one with external data that has not been loaded.

    The twin (kind ``"float16"``): the input with every float32 weight the converter
    stores as float16 rounded to float16, computing in float32 (``_twin.float16_twin``).
    The result also rounds activations to float16 between ops, which is what the
    float16 tolerance allows for.
    """

    def __init__(self, *, keep_io_types: bool = True, block_ops: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.keep_io_types = keep_io_types
        self.block_ops = SENSITIVE_OPS + tuple(block_ops)
        # Without kept I/O types the graph's float inputs and outputs become float16.
        self.keeps_interface = keep_io_types

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        if not any(v.dtype == ir.DataType.FLOAT for v in _values(model.graph)):
            self.decline("no float32 tensors")
            return self.result(model, modified=False)
        if any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()):
            self.decline("weights are in external data: not converted")
            return self.result(model, modified=False)
        proto = ir.to_proto(model)
        converted = convert_float_to_float16(
            proto,
            keep_io_types=self.keep_io_types,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(self.block_ops),
            disable_shape_infer=_has_contrib_ops(proto),
        )
        result = ir.from_proto(converted)
        result.graph.sort()  # the converter appends the input Casts after their users
        kept = sum(1 for node in result.graph if node.op_type in self.block_ops)
        self.note(f"float16; {kept} sensitive nodes kept float32")
        blocked = list(DEFAULT_OP_BLOCK_LIST) + list(self.block_ops)
        twin = Twin(
            float16_twin(model, blocked, keep_io_types=self.keep_io_types),
            "float16",
            "the input with its float16 weights rounded to float16, computing in float32"
            + ("" if self.keep_io_types else ", float16 inputs and outputs"),
        )
        return self.result(result, modified=True, twin=twin)


def _values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def _has_contrib_ops(proto: onnx.ModelProto) -> bool:
    # onnx's shape inference does not know com.microsoft ops and would drop their output types.
    return any(node.domain == MS_DOMAIN for node in proto.graph.node)
