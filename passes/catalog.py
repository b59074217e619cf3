"""graphopt's passes, in pipeline order: one line per pass, with the rules that compose them.

``default_for`` names the targets whose default pipeline runs the pass; a pass with
no target is opt-in (its flag, or ``--passes +NAME``). A fusion is default only where
it measured faster than the graph without it (benchmarks/fusion_ablation.py,
docs/benchmarks.md); ones ONNX Runtime already performs when it loads the model, or
that measured slower, are opt-in.

Each pass module is imported only when its pass is built, so reading the catalog
(``graphopt passes``) loads no pass, and importing one pass never loads the catalog.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from optimizer.cpu_features import int8_weight_range
from optimizer.options import TARGETS, flag_of
from optimizer.protocol import PassContext, PassSpec, Request

BOTH = frozenset(TARGETS)
_INT8 = ("per_channel", "full_range_weights", "exclude", "quantize_outputs", "smooth")
_PRUNING = ("importance", "global_ranking", "repair")
_INT4 = (
    "block_size",
    "int4_method",
    "symmetric",
    "int4_accuracy_level",
    "int4_outlier_channels",
    "exclude",
    "quantize_outputs",
    "full_range_weights",
)
_NOT_WITH_FP16 = ("convert-float16",)
# Passes that shrink the float model: precision changes run after them.
_LOWRANK = ("factorize-lowrank",)
_PRUNERS = ("prune-ffn", "prune-heads", "prune-ffn-heads", "prune-channels")


def _pass(path: str) -> Any:
    """The class at ``module:Class``, imported on first use."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _int8(context: PassContext) -> dict[str, Any]:
    """Keyword arguments shared by the int8 passes."""
    options = context.options
    weights = int8_weight_range(options.full_range_weights)
    return {
        "per_channel": options.per_channel,
        "reduce_range": weights.reduce_range,
        "weight_range_note": weights.note,
        "exclude": options.exclude,
        "quantize_outputs": options.quantize_outputs,
        "budget": context.budget,
        "samples": context.samples,
        "original": context.original,
        "smooth_alpha": options.smooth,
        "timing_threads": options.threads,
        "timing_target": options.target,
        "decode_steps": options.budget_decode_steps,
    }


def _int4(context: PassContext) -> dict[str, Any]:
    """quantize-int4's arguments: block size, method, zero points, target, layer selection, samples and budget."""
    options = context.options
    return {
        "block_size": options.block_size,
        "method": options.int4_method,
        "symmetric": options.symmetric,
        "target": options.target,
        "accuracy_level": options.int4_accuracy_level,
        "outlier_channels": options.int4_outlier_channels,
        # the weight range of the layers the budget falls back to int8, as for the int8 passes
        "reduce_range": int8_weight_range(options.full_range_weights).reduce_range,
        "exclude": options.exclude,
        "quantize_outputs": options.quantize_outputs,
        "budget": context.budget,
        "samples": context.samples,
        "original": context.original,
        "samples_generated": context.samples_generated,
        "timing_threads": options.threads,
        "decode_steps": options.budget_decode_steps,
    }


@dataclass(frozen=True)
class _Alone(Request):
    """Asked by ``option`` while ``unless`` is not set: ``--prune-ffn`` alone (with ``--prune-heads`` too,
    prune-ffn-heads cuts both at once)."""

    unless: str = ""

    def asked(self, options: Any) -> bool:
        return super().asked(options) and getattr(options, self.unless) is None


@dataclass(frozen=True)
class _Together(Request):
    """Asked by ``option`` and ``also`` both set: ``--prune-ffn R --prune-heads R``."""

    also: str = ""
    listed = False  # not offered as a way to ask in "needs" messages: its parts are

    def asked(self, options: Any) -> bool:
        return super().asked(options) and getattr(options, self.also) is not None

    def describe(self) -> str:
        return f"{super().describe()} with {flag_of(self.also)}"


def _pruning(context: PassContext, ratio: float | None) -> dict[str, Any]:
    """A pruning pass's arguments: its ratio, importance, ranking, repair, samples and budget."""
    options = context.options
    return {
        "ratio": ratio or 0.0,
        "importance": options.importance,
        "ranking": "global" if options.global_ranking else "layer",
        "repair": options.repair,
        "samples": context.samples,
        "budget": context.budget,
        "original": context.original,
        # Generated samples still measure drift and drive the budget search; nothing is fitted to them.
        "samples_generated": context.samples_generated,
    }


# fmt: off
CATALOG: tuple[PassSpec, ...] = (
    PassSpec("bind-dims", lambda c: _pass("passes.dim_binding:BindDimsPass")(c.dims), "Fix symbolic input dims to the --dim sizes so all shape arithmetic folds (--static-shapes).", specializes_shapes=True, requested_by=Request("static_shapes")),
    PassSpec("remove-identity", lambda c: _pass("passes.cleanup:RemoveIdentityPass")(), "Remove Identity nodes (onnx-ir).", default_for=BOTH),
    PassSpec("fold-constants", lambda c: _pass("passes.constant_folding:FoldConstantsPass")(), "Fold constant subgraphs and static shape arithmetic (onnxscript).", default_for=BOTH),
    PassSpec("simplify-ops", lambda c: _pass("passes.op_simplification:SimplifyOpsPass")(), "No-op removal, cast/slice chains, Conv+BatchNorm and Pad+Conv folding (onnxscript rewrite rules).", default_for=BOTH),
    PassSpec("simplify-shapes", lambda c: _pass("passes.shape_simplification:ShapeSimplificationPass")(), "Rewrite computed Reshape/Expand targets as constants with 0/-1, keeping shapes dynamic.", default_for=BOTH),
    PassSpec("merge-subexpressions", lambda c: _pass("passes.cleanup:EliminateCommonSubexpressionsPass")(), "Merge duplicate computations, e.g. repeated Shape chains (onnx-ir).", default_for=BOTH),
    PassSpec("lift-constants", lambda c: _pass("passes.cleanup:LiftConstantsPass")(), "Turn Constant nodes into initializers (onnx-ir).", default_for=BOTH),
    PassSpec("share-transposed-initializers", lambda c: _pass("passes.initializer_deduplication:ShareTransposedInitializersPass")(), "Store an initializer that holds another's transpose as Transpose(other) (the legacy export's tied LM head), and merge its exact copies read as layer weights, before any layer is rewritten.", default_for=BOTH),
    PassSpec("split-conv-padding", lambda c: _pass("passes.conv_padding:SplitConvPaddingPass")(c.target, threads=c.options.threads), "A tall (k×1) Conv's padding written as its own Pad (with axes, which ONNX Runtime does not fold back) where timed faster on this machine.", default_for=frozenset({"cpu"}), times_kernels=True),
    PassSpec("split-packed-heads", lambda c: _pass("passes.fusion.packed_heads:PackedHeadsSplit")(c.target), "Query, key and value taken apart from one packed projection (qkv.reshape(B, S, 3, H, d).permute(2, 0, 3, 1, 4), then qkv[i], unbind or a Slice) into a head split of a slice of it each, as fuse-attention matches.", default_for=frozenset({"cpu"})),
    PassSpec("fuse-layer-norm", lambda c: _pass("passes.fusion.layer_norm:LayerNormFusion")(c.target), "Decomposed LayerNorm into LayerNormalization (opset 17+)."),
    PassSpec("fuse-rms-norm", lambda c: _pass("passes.fusion.rms_norm:RmsNormFusion")(c.target), "Decomposed RMSNorm into SimplifiedLayerNormalization.", default_for=BOTH),
    PassSpec("fuse-gelu", lambda c: _pass("passes.fusion.gelu:GeluFusion")(c.target), "Erf/tanh/sigmoid GELU formulas, recognised by what they compute, into Gelu/FastGelu/QuickGelu."),
    PassSpec("fuse-bias-gelu", lambda c: _pass("passes.fusion.bias_gelu:BiasGeluFusion")(c.target), "Bias Add + Gelu/FastGelu into BiasGelu/FastGelu with bias.", after=("fuse-gelu",)),
    PassSpec("fuse-embed-layer-norm", lambda c: _pass("passes.fusion.embed_layer_norm:EmbedLayerNormFusion")(c.target, c.options.max_sequence), "BERT word/position/segment embedding lookups + LayerNorm into EmbedLayerNormalization.", reads=("max_sequence",)),
    PassSpec("fuse-skip-layer-norm", lambda c: _pass("passes.fusion.skip_layer_norm:SkipLayerNormFusion")(c.target), "Residual Add (+ bias) + LayerNormalization into SkipLayerNormalization.", after=("fuse-layer-norm",)),
    PassSpec("fuse-skip-rms-norm", lambda c: _pass("passes.fusion.skip_layer_norm:SkipRmsNormFusion")(c.target), "Residual Add (+ bias) + SimplifiedLayerNormalization (RMSNorm) into SkipSimplifiedLayerNormalization.", after=("fuse-rms-norm",)),
    PassSpec("fuse-rotary-embedding", lambda c: _pass("passes.fusion.rotary_embedding:RotaryEmbeddingFusion")(c.target, c.options.max_sequence), "Rotary position embedding (x*cos + rotate_half(x)*sin) into RotaryEmbedding.", default_for=BOTH, reads=("max_sequence",)),
    PassSpec("fuse-softmax", lambda c: _pass("passes.fusion.softmax:SoftmaxFusion")(c.target), "Softmax written out as Exp / ReduceSum (with or without ReduceMax) into Softmax, so fuse-attention finds the attention.", default_for=BOTH),
    PassSpec("fuse-attention", lambda c: _pass("passes.fusion.attention:AttentionFusion")(c.target), "Scaled dot-product attention (Q/K/V heads, scales, masks, softmax) into MultiHeadAttention.", default_for=BOTH, after=("fuse-softmax",)),
    PassSpec("pack-qkv", lambda c: _pass("passes.fusion.packed_attention:PackedAttentionFusion")(c.target, c.options.max_sequence, c.options.quantize == "int4" or "quantize-int4" in c.pipeline), "MultiHeadAttention over projections of one input into Attention with packed QKV weights (padding mask as mask_index); not beside quantize-int4 (--quantize int4), which writes Q, K and V in 4 bits.", default_for=BOTH, after=("fuse-attention",), reads=("max_sequence",)),
    PassSpec("fuse-group-query-attention", lambda c: _pass("passes.fusion.group_query_attention:GroupQueryAttentionFusion")(c.target, c.options.max_sequence), "MultiHeadAttention over a key/value cache (Concat of past and new tokens, heads repeated per group) into GroupQueryAttention, which appends to the cache itself.", default_for=frozenset({"cpu"}), after=("fuse-attention",), reads=("max_sequence",)),
    PassSpec("fuse-conv-affine", lambda c: _pass("passes.fusion.conv_affine:ConvAffineFusion")(c.target), "Per-channel constant Mul/Add after a Conv folded into its weights and bias."),
    PassSpec("fuse-matmul-add", lambda c: _pass("passes.fusion.matmul:MatMulAddFusion")(c.target), "2-D MatMul + bias Add into Gemm (onnxscript); ORT does this at load time."),
    PassSpec("fuse-matmul-transpose", lambda c: _pass("passes.fusion.matmul:FusedMatMulFusion")(c.target), "Transposes and constant scaling folded into FusedMatMul (onnxscript); ORT does this at load time."),
    PassSpec("prune-ffn", lambda c: _pass("passes.pruning.ffn:FfnPruningPass")(**_pruning(c, c.options.prune_ffn)), "Remove the least important FFN neurons (up/gate columns, down rows), re-fitting the down projection on samples (--prune-ffn R).", approximate=True, requested_by=_Alone("prune_ffn", unless="prune_heads"), needs="prune_ffn", reads=_PRUNING),
    PassSpec("prune-heads", lambda c: _pass("passes.pruning.heads:HeadPruningPass")(**_pruning(c, c.options.prune_heads)), "Remove the least important heads of fused Attention/MultiHeadAttention, re-fitting the output projection on samples (--prune-heads R).", approximate=True, requested_by=_Alone("prune_heads", unless="prune_ffn"), needs="prune_heads", reads=_PRUNING, after=("fuse-attention",)),
    PassSpec("prune-ffn-heads", lambda c: _pass("passes.pruning.combined:FfnHeadPruningPass")(c.options.prune_ffn, c.options.prune_heads, **{k: v for k, v in _pruning(c, None).items() if k not in ("ratio", "ranking")}), "--prune-ffn R with --prune-heads R: FFN neurons and heads in one cut, ranked across layers by their effect on the outputs, each ratio a total over the layers, then the projections re-fitted layer by layer on the cut model.", approximate=True, requested_by=_Together("prune_ffn", also="prune_heads"), needs="prune_ffn", reads=(*_PRUNING, "prune_heads"), excludes=("prune-ffn", "prune-heads"), after=("fuse-attention",)),
    PassSpec("prune-channels", lambda c: _pass("passes.pruning.channels:ChannelPruningPass")(**_pruning(c, c.options.prune_channels), cost=c.options.channel_cost, exclude=c.options.exclude), "Remove the least important Conv output channels (through BatchNorm, activations, depthwise Convs) and the next Conv's inputs, or the classifier Gemm's after a global pooling (--prune-channels R).", approximate=True, requested_by=Request("prune_channels"), needs="prune_channels", reads=(*_PRUNING, "channel_cost", "exclude")),
    PassSpec("factorize-lowrank", lambda c: _pass("passes.factorization.lowrank:LowRankFactorizationPass")(c.options.lowrank, importance=c.options.importance, repair=c.options.repair, samples=c.samples, samples_generated=c.samples_generated, budget=c.budget, target=c.target, dims=c.options.dims, threads=c.options.threads, exclude=c.options.exclude, original=c.original), "Large constant-weight MatMul/Gemm/Attention projections W (k×n) into x·U·V (U k×r, V r×n): activation-aware SVD, V re-fitted on samples, only where measured faster on this machine (--lowrank R removes R of each layer's parameters).", approximate=True, requested_by=Request("lowrank"), needs="lowrank", reads=("importance", "repair", "exclude"), after=_PRUNERS, times_kernels=True),
    PassSpec("quantize-dynamic", lambda c: _pass("passes.quantization.dynamic:DynamicQuantizationPass")(activation_scale=c.options.activation_scale, **_int8(c)), "int8 weights, activations quantized at run time: MatMul/Gemm into DynamicQuantizeMatMul, Attention into QAttention (--quantize dynamic, --target cpu).", approximate=True, requested_by=Request("quantize", "dynamic"), reads=(*_INT8, "activation_scale"), excludes=(*_NOT_WITH_FP16, "quantize-static"), after=(*_PRUNERS, *_LOWRANK), times_kernels="budget", targets=("cpu",), target_reason="ONNX Runtime's DynamicQuantizeMatMul and MatMulIntegerToFloat have CPU kernels only; --quantize static or int4 run on CUDA"),
    PassSpec("quantize-static", lambda c: _pass("passes.quantization.static:StaticQuantizationPass")(method=c.options.calibration_method, **_int8(c)), "Calibrated int8 in QDQ form: MatMul/Gemm/Conv with QuantizeLinear/DequantizeLinear, Attention into QAttention (--quantize static).", approximate=True, requested_by=Request("quantize", "static"), reads=(*_INT8, "calibration_method"), excludes=_NOT_WITH_FP16, after=(*_PRUNERS, *_LOWRANK), times_kernels="budget"),
    PassSpec("quantize-int4", lambda c: _pass("passes.quantization.int4:Int4QuantizationPass")(**_int4(c)), "4-bit weights only: MatMul/Gemm into MatMulNBits (block-wise scales, RTN/GPTQ/HQQ), embedding tables into GatherBlockQuantized (--quantize int4).", approximate=True, requested_by=Request("quantize", "int4"), reads=_INT4, excludes=(*_NOT_WITH_FP16, "quantize-dynamic", "quantize-static", "quantize-embeddings"), after=(*_PRUNERS, *_LOWRANK), times_kernels="budget"),
    PassSpec("quantize-embeddings", lambda c: _pass("passes.quantization.embedding:EmbeddingQuantizationPass")(exclude=c.options.exclude), "Embedding tables (constant Gather tables) to int8 with one scale per row, a quarter of the size (--quantize-embeddings).", approximate=True, requested_by=Request("quantize_embeddings", True), reads=("exclude",), excludes=_NOT_WITH_FP16),
    PassSpec("convert-float16", lambda c: _pass("passes.quantization.float16:Float16Pass")(keep_io_types=c.options.keep_io_types), "Float16 weights and compute, norm reductions and softmax kept float32, graph I/O types kept (--fp16, --target cuda).", approximate=True, requested_by=Request("fp16", True), reads=("keep_io_types", "max_sequence"), after=_PRUNERS, targets=("cuda",), target_reason="ONNX Runtime's CPU kernels are float32"),
    PassSpec("deduplicate-initializers", lambda c: _pass("passes.initializer_deduplication:DeduplicateInitializersPass")(), "Merge initializers with identical contents.", default_for=BOTH),
    PassSpec("merge-matmul-nbits", lambda c: _pass("passes.fusion.matmul_nbits_merge:MatMulNBitsMergeFusion")(c.target), "MatMulNBits reading one input (Q/K/V, gate/up) into one over their columns, then Split; their exact float corrections merged too.", default_for=frozenset({"cpu", "cuda"}), after=("quantize-int4",)),
    PassSpec("remove-unused", lambda c: _pass("passes.cleanup:RemoveUnusedPass")(), "Remove dead nodes, unused initializers, functions and opsets (onnx-ir).", default_for=BOTH),
)
# fmt: on
