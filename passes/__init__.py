"""graphopt's passes, registered in pipeline order: one line per pass.

``default_for`` names the targets whose default pipeline runs the pass; a pass
with no target is opt-in (select it with ``--passes``). A fusion is default only
where it measured faster than the graph without it (benchmarks/fusion_ablation.py,
docs/benchmarks.md); ones ONNX Runtime already performs when it loads the model, or
that measured slower, are opt-in.
"""

from optimizer.registry import register
from passes import (
    cleanup,
    constant_folding,
    dim_binding,
    initializer_deduplication,
    op_simplification,
    shape_simplification,
)
from passes._settings import int8_settings, pruning_settings
from passes.fusion import (
    attention,
    bias_gelu,
    conv_affine,
    embed_layer_norm,
    gelu,
    layer_norm,
    matmul,
    rms_norm,
    rotary_embedding,
    skip_layer_norm,
)
from passes.pruning import channels, ffn, heads
from passes.quantization import dynamic, embedding, float16, static

# fmt: off

register("bind-dims", lambda o: dim_binding.BindDimsPass(o.dims), "Fix symbolic input dims to the --dim sizes so all shape arithmetic folds (--static-shapes).", specializes_shapes=True)
register("remove-identity", lambda o: cleanup.RemoveIdentityPass(), "Remove Identity nodes (onnx-ir).", default_for=("cpu", "cuda"))
register("fold-constants", lambda o: constant_folding.FoldConstantsPass(), "Fold constant subgraphs and static shape arithmetic (onnxscript).", default_for=("cpu", "cuda"))
register("simplify-ops", lambda o: op_simplification.SimplifyOpsPass(), "No-op removal, cast/slice chains, Conv+BatchNorm and Pad+Conv folding (onnxscript rewrite rules).", default_for=("cpu", "cuda"))
register("simplify-shapes", lambda o: shape_simplification.ShapeSimplificationPass(), "Rewrite computed Reshape/Expand targets as constants with 0/-1, keeping shapes dynamic.", default_for=("cpu", "cuda"))
register("merge-subexpressions", lambda o: cleanup.EliminateCommonSubexpressionsPass(), "Merge duplicate computations, e.g. repeated Shape chains (onnx-ir).", default_for=("cpu", "cuda"))
register("lift-constants", lambda o: cleanup.LiftConstantsPass(), "Turn Constant nodes into initializers (onnx-ir).", default_for=("cpu", "cuda"))
register("fuse-layer-norm", lambda o: layer_norm.LayerNormFusion(o.target), "Decomposed LayerNorm into LayerNormalization (opset 17+).")
register("fuse-rms-norm", lambda o: rms_norm.RmsNormFusion(o.target), "Decomposed RMSNorm into SimplifiedLayerNormalization.", default_for=("cpu", "cuda"))
register("fuse-gelu", lambda o: gelu.GeluFusion(o.target), "Erf/tanh GELU formulas into Gelu/FastGelu.")
register("fuse-bias-gelu", lambda o: bias_gelu.BiasGeluFusion(o.target), "Bias Add + Gelu/FastGelu into BiasGelu/FastGelu with bias.")
register("fuse-embed-layer-norm", lambda o: embed_layer_norm.EmbedLayerNormFusion(o.target), "BERT word/position/segment embedding lookups + LayerNorm into EmbedLayerNormalization.")
register("fuse-skip-layer-norm", lambda o: skip_layer_norm.SkipLayerNormFusion(o.target), "Residual Add (+ bias) + LayerNormalization into SkipLayerNormalization.")
register("fuse-skip-rms-norm", lambda o: skip_layer_norm.SkipRmsNormFusion(o.target), "Residual Add (+ bias) + SimplifiedLayerNormalization (RMSNorm) into SkipSimplifiedLayerNormalization.")
register("fuse-rotary-embedding", lambda o: rotary_embedding.RotaryEmbeddingFusion(o.target, int(o.settings.get("rotary_cache_length", rotary_embedding.DEFAULT_CACHE_LENGTH))), "Rotary position embedding (x*cos + rotate_half(x)*sin) into RotaryEmbedding.", default_for=("cpu", "cuda"))
register("fuse-attention", lambda o: attention.AttentionFusion(o.target, bool(o.settings.get("attention_pack_qkv", True))), "Scaled dot-product attention (Q/K/V heads, scale, mask, softmax) into Attention (packed QKV) or MultiHeadAttention.", default_for=("cpu", "cuda"))
register("fuse-conv-affine", lambda o: conv_affine.ConvAffineFusion(o.target), "Per-channel constant Mul/Add after a Conv folded into its weights and bias.")
register("fuse-matmul-add", lambda o: matmul.MatMulAddFusion(o.target), "2-D MatMul + bias Add into Gemm (onnxscript); ORT does this at load time.")
register("fuse-matmul-transpose", lambda o: matmul.FusedMatMulFusion(o.target), "Transposes and constant scaling folded into FusedMatMul (onnxscript); ORT does this at load time.")
register("prune-ffn", lambda o: ffn.FfnPruningPass(**pruning_settings(o, "prune_ffn")), "Remove the least important FFN neurons (up/gate columns, down rows), re-fitting the down projection on samples (--prune-ffn R).", approximate=True)
register("prune-heads", lambda o: heads.HeadPruningPass(**pruning_settings(o, "prune_heads")), "Remove the least important heads of fused Attention/MultiHeadAttention, re-fitting the output projection on samples (--prune-heads R).", approximate=True)
register("prune-channels", lambda o: channels.ChannelPruningPass(**pruning_settings(o, "prune_channels")), "Remove the least important Conv output channels (through BatchNorm, activations, depthwise Convs) and the next Conv's inputs (--prune-channels R).", approximate=True)
register("quantize-dynamic", lambda o: dynamic.DynamicQuantizationPass(**int8_settings(o)), "int8 weights, activations quantized at run time: MatMul/Gemm into DynamicQuantizeMatMul, Attention into QAttention (--quantize dynamic).", approximate=True)
register("quantize-static", lambda o: static.StaticQuantizationPass(method=o.settings.get("calibration_method", "percentile"), **int8_settings(o)), "Calibrated int8 in QDQ form: MatMul/Gemm/Conv with QuantizeLinear/DequantizeLinear, Attention into QAttention (--quantize static).", approximate=True)
register("quantize-embeddings", lambda o: embedding.EmbeddingQuantizationPass(), "Embedding tables (constant Gather tables) to int8 with one scale per row, a quarter of the size (--quantize-embeddings).", approximate=True)
register("convert-float16", lambda o: float16.Float16Pass(keep_io_types=bool(o.settings.get("keep_io_types", True))), "Float16 weights and compute, norm reductions and softmax kept float32, graph I/O types kept (--fp16, --target cuda).", approximate=True)
register("deduplicate-initializers", lambda o: initializer_deduplication.DeduplicateInitializersPass(), "Merge initializers with identical contents.", default_for=("cpu", "cuda"))
register("remove-unused", lambda o: cleanup.RemoveUnusedPass(), "Remove dead nodes, unused initializers, functions and opsets (onnx-ir).", default_for=("cpu", "cuda"))
# fmt: on
