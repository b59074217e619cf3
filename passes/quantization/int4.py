"""Weight-only int4: MatMul/Gemm weights into ONNX Runtime's MatMulNBits, embedding tables into GatherBlockQuantized."""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.accuracy import AccuracyBudget
from optimizer.domains import MS_DOMAIN, onnx_opset
from optimizer.options import INT4_METHODS
from optimizer.progress import track
from optimizer.protocol import Twin
from passes._layers import (
    EXACT_CORRECTION_PREFIX,
    Layer,
    bias_add,
    excluded,
    find_layers,
    name_nodes,
    row_lookup,
)
from passes._pass import checked_target
from passes._utils import add_initializer, constant_array, remove_dead_nodes, replace_value
from passes.quantization._base import (
    _EXHAUSTIVE_LAYERS,
    QuantizationPass,
    optimistic_figure,
    output_error,
    sample_layer_inputs,
)
from passes.quantization._blockwise import (
    Int4Weight,
    pack_nibbles,
    quantize_gptq,
    quantize_hqq,
    quantize_rtn,
    recover_grid,
    span_overflows,
)
from passes.quantization._int8 import claimed_weight, quantize_weight
from passes.quantization._layer_speed import LayerShape, LayerSpeeds
from passes.quantization._outliers import OutlierChannels, choose_outlier_channels
from passes.quantization._twin import Int8Twin
from passes.quantization.dynamic import _quantize_matmul

# accuracy_level per target: 4 lets the CPU kernel quantize A to int8 per block and
# multiply in integers (the fast path on x86 and Arm); CUDA's kernel dequantizes to
# float16/float32 and ignores it, 0 states that.
ACCURACY_LEVELS = {"cpu": 4, "cuda": 0}
# The budget's alternative at level 4: the same 4-bit weights, the layer's input kept float (level 0).
FLOAT_INPUT = "int4-float-input"
# Tables smaller than this stay float: the saving is not worth the op.
_MIN_TABLE_ELEMENTS = 1 << 16
_SMALL_TABLE = f"under {_MIN_TABLE_ELEMENTS:,} values: the saving is not worth the op"
# What a lookup of an id outside the table gives once it is GatherBlockQuantized (ONNX Runtime 1.32, CPU).
_OUT_OF_RANGE_IDS = (
    "an id outside the table (not in [-rows, rows)) now looks up a row of zeros, where the float Gather "
    "refused it with an error: feed ids in range"
)
# --int4-outlier-channels leaves an input whole whose largest channel is under this many times its
# median channel: the rounding of its blocks would gain under a bit.
MIN_OUTLIER_RATIO = 2.0
# Rows of each layer's input GPTQ accumulates its Hessian from, at most.
_GPTQ_ROWS = 8192


class Int4QuantizationPass(QuantizationPass):
    """Rewrite float32 MatMul/Gemm layers with constant 2-D weights into com.microsoft ``MatMulNBits``
    (bits=4, weight-only), and constant embedding tables into com.microsoft ``GatherBlockQuantized``.

    - ``MatMul [..., K] x [K, N]`` and ``Gemm`` (transB undone; transA, alpha, beta and a C that is no feature
      bias written out first by ``QuantizationPass.call``) become ``MatMulNBits`` with ``K``, ``N``,
      ``block_size`` and a packed ``[N, ceil(K/block), block/2]`` weight (``passes.quantization._blockwise``); a K
      that is not a multiple of the block is padded with zeros (the kernel's own
      layout). A following ``Add`` of a constant ``[N]`` bias, or Gemm's bias, becomes
      the op's bias input. ``symmetric`` stores no zero points (ONNX Runtime's default
      8); otherwise one uint8 zero point per block.
    - Float zero points (HQQ's, or a recovered grid's, below) are stored as their
      nearest uint8 and the rest is added exactly: ``Add(MatMulNBits(x), MatMul(MatMul(x,
      P), offsets))``, ``P`` the ``[K, n_blocks]`` 0/1 matrix that sums ``x`` over each
      block (``Int4Weight.offsets``); ``MatMul(x, P)`` once per input, shared by the layers
      that read it. ONNX Runtime 1.32's CPU kernel takes float zero points only on a path
      62-78x slower at one row than its int8 path (measured, see docs/benchmarks.md); the
      small MatMuls added 22-30 % over 100 layers at one row (each layer summing its own input).
    - ``outlier_channels`` K > 0 (accuracy_level 4): the K channels of largest max |x| on
      the samples of each layer's input (``_outliers.choose_outlier_channels``; inputs under
      ``MIN_OUTLIER_RATIO`` x their median channel stay whole) are zeroed before the kernel
      (one ``Mul`` per input, so its int8 rounding per block is not set by them) and added
      back exactly: ``Gather(x, channels)`` beside the block sums, times the stored weight's
      rows in the same correction MatMul. Without samples none are chosen (a note says so). Padded
      positions do not count; without a budget the figure says it is on the samples they were chosen on.
    - ``accuracy_level`` 4 on CPU (A is quantized to int8 per row and block inside the
      kernel, then integer dot products), 0 on CUDA.
    - A weight that already lies on a 4-bit grid of ``block_size`` (a model exported
      from a GGUF, GPTQ or AWQ checkpoint, dequantized) is stored exactly, whatever the
      method (``recover_grid``): re-rounding it would only add error.
    - The values come from ``method``: ``"rtn"`` round to nearest (ONNX Runtime's own
      packer's choice), ``"gptq"`` GPTQ error compensation against each layer's inputs
      on the calibration samples (every layer's inputs from one run of the *float*
      model, not re-collected layer after layer; padded positions left out), ``"hqq"`` data-free half-quadratic
      zero points. GPTQ on generated samples (no --calibration) falls back to RTN
      with a note: nothing is fitted to random tokens. A weight several layers read is
      fitted once, to all their inputs, so they keep one packed weight.
    - With ``embeddings``, each constant float32 ``[rows, width]`` table read only by
      row ``Gather`` s (axis 0, or -2) becomes ``GatherBlockQuantized`` (uint8 data, 4 bits, blocks along
      the width, rounded to nearest). A table *tied* to an LM head quantized here
      (the head's weight is the table's transpose, by value or as ``Transpose(table)``;
      ``share-transposed-initializers`` turns the first into the second) is stored once: the
      head's packed ``[rows, blocks, block/2]`` weight (and so its values, GPTQ's where
      GPTQ chose them) is the lookup's data too (the scales are two small tensors: the
      ops want them in different shapes); a head kept exact on its 8-bit grid (GGUF's
      Q8_0) shares its ``[rows, blocks, block]`` bytes the same way, the lookup with
      ``bits=8``. When the head stays float the table does too (quantizing only the
      lookup adds a copy); a head with float zero points (HQQ's, a Q4_1 grid's block
      offsets) cannot be shared (GatherBlockQuantized reads uint8 zero points only): refused.
      Tables under 65,536 values, whose width is not a multiple of the block, holding a NaN
      or an infinity (its block came back all NaN), or read inside an ``If``/``Loop``/``Scan``
      body stay float, as do all of them when no layer is quantized; each refusal says why. A lookup
      of an id outside the table (not in ``[-rows, rows)``), which ``Gather`` refuses with an error,
      gives a row of zeros in ``GatherBlockQuantized`` (ONNX Runtime 1.32's CPU kernel): the note says so.

    The twin (kind ``"int4"``): the input with each chosen weight replaced by its
    dequantized float32 values, and at accuracy_level 4 each such layer's input
    quantized to int8 per row and block of ``block_size`` along K (scale = block max /
    127, round half to even) in plain ONNX ops — the arithmetic the CPU kernel performs
    (measured equal to 1e-5 on ONNX Runtime 1.32, x86). Tables are their dequantized values.

    Under an accuracy budget a layer can take an alternative before float: at level 4 a
    4-bit layer can keep float inputs (the scheme ``FLOAT_INPUT``: the same weights at
    accuracy_level 0, the exact product of its 4-bit weights; its twin does not round the
    input), and on ``target`` cpu any layer but a tied head can fall back to int8 (the scheme ``"int8"``:
    ``DynamicQuantizeMatMul``, which ONNX Runtime has no CUDA kernel for, so not on ``target`` cuda; int8
    weights per output column, 7-bit with ``reduce_range``
    (the CLI chooses it for the CPU as for the int8 passes), uint8 activations per run, as
    ``DynamicQuantizationPass`` writes it; its twin quantizes the input through
    ``DynamicQuantizeLinear``), chosen by accuracy gained per latency given back like
    every int8 budget (``QuantizationPass``), each layer timed in its own form (bits, zero
    points, offsets, level).

    A float16 layer (float16 input and weight, ``find_layers(float16=True)``) becomes a float16 ``MatMulNBits``: its
    scales rounded to float16 before anything dequantizes with them, its scales and bias stored float16, its twin
    the float32 layer between two Casts (``_float32_island``: ONNX Runtime 1.32's CPU kernel gives that, measured
    equal on every element at levels 0 and 4). Under HQQ, a recovered grid's float zero points or outlier channels
    (float32 corrections) it stays float with a refusal; it has no int8 alternative (DynamicQuantizeMatMul reads
    float32), and the budget times it as its float32 form.

    Refuses (stays float): tensors other than float32 and float16, non-constant weights, weights that are
    not 2-D, packed-QKV com.microsoft ``Attention``, a weight
    one of whose blocks spans more than float32 holds (its asymmetric scale would be infinite), and the
    layers ``QuantizationPass`` keeps float (``exclude`` — which also matches Gather
    names — model outputs, the accuracy budget).
    """

    kinds = ("matmul", "gemm")
    float16_layers = True
    precision = "int4"
    default_scheme = "int4"
    measures_speed = True

    def __init__(
        self,
        *,
        block_size: int = 32,
        method: str = "rtn",
        symmetric: bool = False,
        target: str = "cpu",
        accuracy_level: int | None = None,
        embeddings: bool = True,
        exclude: Sequence[str] = (),
        quantize_outputs: bool = False,
        budget: AccuracyBudget | None = None,
        samples: Mapping[str, np.ndarray] | None = None,
        samples_generated: bool = False,
        layer_speeds: LayerSpeeds | None = None,
        timing_threads: int | None = None,
        reduce_range: bool = True,
        outlier_channels: int = 0,
        decode_steps: int | None = None,
        original: ir.Model | None = None,
    ) -> None:
        super().__init__(
            original=original,
            decode_steps=decode_steps,
            reduce_range=reduce_range,
            exclude=exclude,
            quantize_outputs=quantize_outputs,
            budget=budget,
            samples=samples,
            layer_speeds=layer_speeds,
            timing_threads=timing_threads,
            timing_target=target,
        )
        if method not in INT4_METHODS:
            raise ValueError(f"int4 method {method!r}: expected one of {', '.join(INT4_METHODS)}")
        if symmetric and method == "hqq":
            raise ValueError("symmetric with method 'hqq': HQQ fits each block's zero point; choose one")
        self.block_size = block_size
        self.method = method
        self.symmetric = symmetric
        self.accuracy_level = ACCURACY_LEVELS[checked_target(target)] if accuracy_level is None else accuracy_level
        if self.accuracy_level not in (0, 4):
            # Levels 1-3 (float32, float16, bfloat16 compute) have no twin written here.
            raise ValueError(f"accuracy_level {self.accuracy_level}: expected 0 (float) or 4 (int8 input)")
        if outlier_channels < 0 or (outlier_channels and self.accuracy_level != 4):
            raise ValueError(
                f"outlier_channels {outlier_channels}: expected 0, or a positive count at accuracy_level 4 "
                "(the int8 rounding of the input they are taken out of)"
            )
        self.outlier_channels = outlier_channels
        # The chosen layers' outlier channels, by layer name (a layer's input may be renamed by the rewrite).
        self._outliers: dict[str, OutlierChannels] = {}
        # Per graph: the values each input's readers share (its zeroed copy; its block sums and outlier channels).
        self._shared: dict[tuple, ir.Value] = {}
        self.embeddings = embeddings
        self.samples_generated = samples_generated
        self._weights: dict[str, Int4Weight] = {}
        self._method = method
        self._hessian_inputs: dict[str, np.ndarray] = {}
        self._grids: dict[tuple[str, bool], Int4Weight | None] = {}
        # While the budget times a probe layer: the (bits, offsets, zero points, split) form of the layer it stands for.
        self._probe: tuple[int, bool, bool, bool] | None = None
        self._planned: dict[str, str | None] = {}
        self._applied: dict[str, Int4Weight] = {}
        self._heads: dict[str, tuple[ir.Value, Int4Weight]] = {}
        # The default-domain opset of the model being rewritten: its block sums' form (``_block_sums``) is the
        # form its timing probes (written at opset 18) take too. None: each graph's own.
        self._source_opset: int | None = None

    # -- choosing the values -------------------------------------------------------------

    def prepare(self, model: ir.Model, layers: Sequence[Layer], batches: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._weights, self._hessian_inputs, self._method = {}, {}, self.method
        self._shared_readers: dict[str, tuple[str, ...]] = {}
        self._shared_inputs: dict[str, list[str]] = {}
        self._outliers = self._choose_outliers(model, layers, batches) if self.outlier_channels else {}
        recovered = [layer for layer in layers if self._grid(layer) is not None]
        if recovered:
            offsets = sum(1 for layer in recovered if self._grid(layer).has_offsets)
            eight = sum(1 for layer in recovered if self._grid(layer).bits == 8)
            self.note(
                f"{len(recovered) - eight} of {len(layers)} weights already lie on a 4-bit grid of block "
                f"{self.block_size} (a dequantized 4-bit checkpoint): stored exactly, not re-rounded"
                + (f"; {eight} on an 8-bit grid, kept exact in 8 bits (MatMulNBits bits=8)" if eight else "")
                + (f"; {offsets} with zero points between levels, added back as block offsets" if offsets else "")
            )
        if self.symmetric and any(self._grid(layer).zero_points is not None for layer in recovered):
            self.note("--symmetric: weights on an asymmetric grid keep their zero points (exact beats symmetric)")
        layers = [layer for layer in layers if self._grid(layer) is None]
        if self.method != "gptq" or not layers:
            return
        if not batches or self.samples_generated:
            self.note("GPTQ needs calibration samples (--calibration); round-to-nearest used")
            self._method = "rtn"
            return
        self._hessian_inputs = sample_layer_inputs(model, layers, batches, rows=_GPTQ_ROWS)
        # A float16 layer's inputs: its Hessian summed in float16 would overflow (and round) long before float32's.
        self._hessian_inputs = {name: x.astype(np.float32) for name, x in self._hessian_inputs.items()}
        # A row holding an infinity (calibration may hold one: an additive mask's -inf; NaN is refused up front)
        # made the Hessian infinite and every scale after it NaN: the model then read NaN on every sample and
        # the budget left it float. Such rows are left out of the fit, as the ranges take finite values only.
        infinite = 0
        for name, x in self._hessian_inputs.items():
            finite = np.isfinite(x).all(axis=1)
            if not finite.all():
                infinite += 1
                self._hessian_inputs[name] = x[finite]
        rows = min(len(x) for x in self._hessian_inputs.values()) if self._hessian_inputs else 0
        self.note(f"GPTQ on {rows} calibration rows per layer input (inputs from the float model)")
        if infinite:
            self.note(f"GPTQ: rows holding an infinity left out of {infinite} layer inputs' fit")
        # A weight several layers read (cross-layer sharing) is fitted once, to all their inputs.
        readers: dict[tuple[str, bool], list[Layer]] = {}
        for layer in layers:
            readers.setdefault(_orientation(layer), []).append(layer)
        shared = [group for group in readers.values() if len(group) > 1]
        for group in shared:
            for layer in group:
                self._shared_readers[layer.name] = tuple(reader.name for reader in group)
                self._shared_inputs[layer.name] = [reader.activation.name for reader in group]
        if shared:
            self.note(f"{len(shared)} shared weights fitted once by GPTQ, to the inputs of all their readers")

    def _choose_outliers(self, model: ir.Model, layers: Sequence[Layer], batches) -> dict[str, OutlierChannels]:
        """Each chosen layer's outlier channels (``choose_outlier_channels``) by layer name; refusals noted."""
        flag = f"--int4-outlier-channels {self.outlier_channels}"
        if not batches:
            self.note(f"{flag}: no sample inputs, no channels chosen")
            return {}
        names = [layer.activation.name for layer in layers]
        found, left_out = choose_outlier_channels(model, names, batches, self.outlier_channels)
        chosen = {name: channels for name, channels in found.items() if channels.ratio >= MIN_OUTLIER_RATIO}
        reasons = Counter(left_out.values())
        if flat := len(found) - len(chosen):
            reasons[f"largest channel under {MIN_OUTLIER_RATIO:g}x the median (under a bit to gain)"] = flat
        if reasons:
            whole = "; ".join(f"{count} {reason}" for reason, count in reasons.items())
            self.note(f"{flag}: layer inputs that keep every channel in the rounding: {whole}")
        return {layer.name: chosen[layer.activation.name] for layer in layers if layer.activation.name in chosen}

    def _split(self, layer: Layer) -> OutlierChannels | None:
        """The channels of ``layer``'s input kept out of the kernel's int8 rounding, or None (not rounded,
        none chosen, or the int8 fallback)."""
        if self.scheme(layer) == "int8" or self._level(layer) != 4:
            return None
        if self._probe is not None:  # a timing probe: any channels stand for the layer's
            return OutlierChannels(np.arange(self.outlier_channels), 0.0) if self._probe[3] else None
        return self._outliers.get(layer.name)

    def weight(self, layer: Layer) -> Int4Weight:
        """The 4-bit values chosen for ``layer`` (computed once per run, shared by the rewrite and the twin)."""
        if self._probe is not None:  # a timing probe's copies: only the form counts (``_probe_weight``)
            return quantize_rtn(layer.weight, self.block_size, symmetric=self.symmetric)
        if layer.name not in self._weights:
            names = self._shared_inputs.get(layer.name, [layer.activation.name])
            if (grid := self._grid(layer)) is not None:
                chosen = grid
            elif self._method == "gptq" and all(name in self._hessian_inputs for name in names):
                inputs = np.concatenate([self._hessian_inputs[name] for name in names])
                chosen = quantize_gptq(layer.weight, inputs, self.block_size, symmetric=self.symmetric)
                for reader in self._shared_readers.get(layer.name, ()):
                    self._weights[reader] = chosen  # one packed weight for every reader
            elif self._method == "hqq":
                chosen = quantize_hqq(layer.weight, self.block_size)
            else:
                chosen = quantize_rtn(layer.weight, self.block_size, symmetric=self.symmetric)
            if layer.float16:  # its scales are stored float16: the twin dequantizes with what the kernel reads
                chosen = dataclasses.replace(chosen, scales=chosen.scales.astype(np.float16).astype(np.float32))
            self._weights[layer.name] = chosen
        return self._weights[layer.name]

    def fitted_caveat(self, smoothed: bool = False) -> str:
        # GPTQ fitted to every calibration row scores far better on them than on new ones (6 rows: cosine 0.9996
        # on them, 0.992 on held-out inputs, where round to nearest gave 0.996): the figure says so. Outlier channels
        # chosen on those rows are kept out of the rounding exactly where those rows need it, and new rows' outliers
        # elsewhere are not (a review on 2026-12-07: cosine 1 - 1e-7 on the rows they were chosen on, 1 - 1e-4 on
        # others: a weight on its 4-bit grid, one channel 100x the others).
        fitted = []
        if self._method == "gptq" and self._hessian_inputs:
            fitted.append("GPTQ was fitted to")
        if any(name in self._outliers for name in self.quantized):
            fitted.append("the outlier channels were chosen on")
        if not fitted:
            return super().fitted_caveat(smoothed)
        return optimistic_figure(" and ".join(fitted), self.budget)

    def _grid(self, layer: Layer) -> Int4Weight | None:
        """``layer``'s weight as the exact 4-bit blocks it already is, or None (``recover_grid``), once per
        weight as this layer reads it (``_orientation``)."""
        key = _orientation(layer)
        if key not in self._grids:
            grid = recover_grid(layer.weight, self.block_size)
            if grid is None and self.accuracy_level == 4:
                # An 8-bit checkpoint's layer (GGUF keeps heads in Q8_0) stays exact in MatMulNBits bits=8, whose
                # int8-input kernel is fast (2.0 ms against float's 8.1 for SmolLM2's head at one row); at
                # level 0 its float path is not (135 ms), so there the layer is rounded to 4 bits like any other.
                grid = recover_grid(layer.weight, self.block_size, bits=8)
            self._grids[key] = grid
        return self._grids[key]

    # -- the rewrite ---------------------------------------------------------------------

    def begin(self, layers: Sequence[Layer]) -> None:
        self._heads: dict[str, tuple[ir.Value, Int4Weight]] = {}
        self._shared = {}

    def alternatives(self, layer: Layer) -> tuple[str, ...]:
        # Level 0 is the exact product of the 4-bit weights; at one row still faster than float for
        # 4 bits (87 against 132 us, 576x1536), not for 8 (135 ms against 8 for SmolLM2's head).
        # A head whose tied table reads its packed weight has no int8 form: its int8 copy would sit
        # beside the float table (two tensors for one); float keeps one. On CUDA there is none either:
        # DynamicQuantizeMatMul has CPU kernels only (ONNX Runtime would run the layer on the CPU).
        # A float16 layer neither: DynamicQuantizeMatMul reads float32.
        tied_or_cuda = layer.name in self._planned.values() or self.timing_target == "cuda"
        int8 = () if tied_or_cuda or layer.float16 else ("int8",)
        if self.accuracy_level == 4 and self.weight(layer).bits == 4:
            return (FLOAT_INPUT, *int8)
        return int8

    def layer_label(self, layer: Layer) -> str:
        # A layer on an 8-bit checkpoint grid (a GGUF Q8_0 head) is written MatMulNBits bits=8, not 4.
        if self.scheme(layer) == self.default_scheme and self.weight(layer).bits == 8:
            return "8-bit (exact grid)"
        return super().layer_label(layer)

    def _level(self, layer: Layer) -> int:
        """The accuracy_level ``layer`` is written with: 0 where the budget chose float inputs for it."""
        return 0 if self.scheme(layer) == FLOAT_INPUT else self.accuracy_level

    def layer_refusal(self, layer: Layer) -> str | None:
        if layer.float16 and (reason := self._float16_refusal(layer)) is not None:
            return reason
        # A block spanning more than float32 holds has an infinite asymmetric scale: the layer read NaN, the
        # pass's check missed and rolled back every layer with it. Symmetric scales (peak / 8) cannot overflow.
        if (not self.symmetric or self.method == "hqq") and span_overflows(layer.weight, self.block_size):
            return (
                "a block of its weight spans more than float32 holds, so its scale would be infinite "
                "(--symmetric scales by the block's peak instead)"
            )
        return None

    def _float16_refusal(self, layer: Layer) -> str | None:
        """Why a float16 layer has no form here: its block offsets and outlier channels are float32 MatMuls."""
        if self.outlier_channels:
            return "a float16 layer: its outlier channels would be added back in float32 ops (no float16 form here)"
        if self.method == "hqq" or ((grid := self._grid(layer)) is not None and grid.has_offsets):
            return (
                "a float16 layer: its float zero points (HQQ's, or a recovered grid's) would be added back as block "
                "offsets in float32 ops (no float16 form here)"
            )
        return None

    def tied_weight_refusal(self, layer: Layer) -> str | None:
        if layer.name in self._planned.values():
            return None  # its table reads the head's packed weight (GatherBlockQuantized)
        return super().tied_weight_refusal(layer)

    def _form(self, layer: Layer | None) -> tuple[int, bool, bool, bool]:
        """The (bits, block offsets, zero points stored, outlier channels split) ``layer`` is written with
        at the default scheme (the method's when none is named)."""
        if layer is None:
            return 4, self.method == "hqq", not self.symmetric or self.method == "hqq", self.outlier_channels > 0
        weight = self.weight(layer)
        split = layer.name in self._outliers
        return weight.bits, weight.has_offsets, weight.zero_points is not None, split

    def speed_form(self, scheme: str, layer: Layer | None = None) -> str:
        if scheme == "int8":
            return "DynamicQuantizeMatMul"
        bits, offsets, zero_points, split = self._form(layer)
        width = " bits 8" if bits == 8 else ""
        level = 0 if scheme == FLOAT_INPUT else self.accuracy_level
        # "summed by ...": the block sums' op (``_sums_op``), so a timing of one form is not reused for the other
        extra = (f" + block offsets (summed by {self._sums_op(layer)})" if offsets else "") + (
            "" if zero_points else " symmetric"
        )
        if split and level == 4:
            extra += f" + {self.outlier_channels} outlier channels float"
        return f"MatMulNBits{width} block {self.block_size} accuracy_level {level}{extra}"

    def _sums_op(self, layer: Layer | None) -> str:
        """The op ``_block_sums`` writes ``layer``'s block sums with: ``ReduceSum`` where K fills whole blocks and
        the source model's opset is 15 or later, else ``MatMul`` (K unknown without a layer: ``ReduceSum``)."""
        k = None if layer is None else layer.weight.shape[0]
        return "ReduceSum" if _sums_by_reduce(k, self.block_size, self._source_opset) else "MatMul"

    def _layer_model(self, shape: LayerShape, scheme: str, layer: Layer | None = None) -> ir.Model:
        # The probe's random weight lies on no grid: it is written in the form the layer will be.
        saved, self._probe = self._probe, self._form(layer)
        try:
            return super()._layer_model(shape, scheme, layer)
        finally:
            self._probe = saved

    def quantize_layer(self, graph: ir.Graph, layer: Layer) -> None:
        if self.scheme(layer) == "int8":
            _quantize_matmul(graph, layer, True, self.reduce_range, None)
            return
        node, exact = layer.node, self.weight(layer)
        if self._probe is not None:
            exact = _probe_weight(exact, *self._probe[:3])
        weight, offsets = exact.stored(), exact.offsets()
        prefix = node.name
        activation = layer.activation
        split = self._split(layer)
        packed = add_initializer(graph, f"{prefix}.weight_int4", weight.packed())
        source = activation if split is None else self._zeroed(graph, node, activation, split, weight.k)
        # A float16 layer's MatMulNBits reads float16 (its input, scales and bias; ONNX Runtime 1.32 runs it on CPU).
        half = np.float16 if layer.float16 else np.float32
        scales = weight.scales.reshape(-1).astype(half)
        inputs = [source, packed, add_initializer(graph, f"{prefix}.scales", scales)]
        zero_points = weight.packed_zero_points()
        inputs.append(add_initializer(graph, f"{prefix}.zero_points", zero_points) if zero_points is not None else None)
        result, bias = node.outputs[0], layer.bias
        if bias is None and (following := bias_add(layer)) is not None:
            bias, add, _ = following
            result = add.outputs[0]
        inputs.append(None)  # g_idx (deprecated)
        inputs.append(add_initializer(graph, f"{prefix}.bias", bias.astype(half)) if bias is not None else None)
        while inputs[-1] is None:
            inputs.pop()
        attributes = [
            ir.AttrInt64("K", weight.k),
            ir.AttrInt64("N", weight.n),
            ir.AttrInt64("bits", weight.bits),
            ir.AttrInt64("block_size", self.block_size),
        ]
        if level := self._level(layer):
            attributes.append(ir.AttrInt64("accuracy_level", level))
        fused = ir.Node(MS_DOMAIN, "MatMulNBits", inputs, attributes=attributes, name=f"{prefix}_int4")
        added, output = [fused], fused.outputs[0]
        if offsets is not None or split is not None:
            extra = self._extra(graph, node, activation, weight.k, offsets is not None, split)
            table = _correction_table(exact, split)
            added += _corrected(graph, extra, output, table, prefix, offsets=offsets is not None)
            output = added[-1].outputs[0]
        graph.insert_before(node, added)
        replace_value(result, output, inherit=True)
        self._heads[layer.name] = (packed, exact)

    def _zeroed(self, graph: ir.Graph, reader: ir.Node, x: ir.Value, split: OutlierChannels, width: int) -> ir.Value:
        """``x`` (``width`` channels) with its outlier channels zeroed, once per graph for all its readers."""
        return self._shared_value(graph, (id(x), "zeroed"), reader, x, lambda: _zero_channels(graph, x, split, width))

    def _extra(
        self, graph: ir.Graph, reader: ir.Node, x: ir.Value, k: int, offsets: bool, split: OutlierChannels | None
    ) -> ir.Value:
        """What ``_extra_inputs`` computes, each part once per graph for all readers of ``x``."""
        parts = []
        if offsets:
            block = self.block_size
            opset = self._source_opset if self._source_opset is not None else onnx_opset(graph.opset_imports, 1)
            by_reduce = _sums_by_reduce(k, block, opset)
            build = lambda: _block_sums(graph, x, k, block, by_reduce=by_reduce)  # noqa: E731
            parts.append(self._shared_value(graph, (id(x), "sums"), reader, x, build))
        if split is not None:
            gather = lambda: _outlier_columns(graph, x, split)  # noqa: E731
            parts.append(self._shared_value(graph, (id(x), "outliers"), reader, x, gather))
        if len(parts) == 1:
            return parts[0]
        return self._shared_value(graph, (id(x), "both"), reader, x, lambda: _side_by_side(parts))

    def _shared_value(self, graph: ir.Graph, key: tuple, reader: ir.Node, x: ir.Value, build) -> ir.Value:
        """The output of the last of the nodes ``build()`` makes from ``x`` (one node or a list), once per graph
        and ``key`` (the readers of one input share it), inserted before ``reader`` (layers are rewritten in
        graph order, so before every later reader too) under a node name ``graph`` lacks (the nodes before
        the last named after it)."""
        if key not in self._shared:
            built = build()
            nodes = [built] if isinstance(built, ir.Node) else list(built)
            node = nodes[-1]
            taken = {existing.name for existing in graph}
            base, suffix = f"{x.name}_{node.name}", 0
            while (name := base if not suffix else f"{base}_{suffix}") in taken:
                suffix += 1
            for step in nodes[:-1]:
                step.name = f"{name}.{step.name}"
                step.outputs[0].name = f"{step.name}.output"
            node.name = name
            node.outputs[0].name = f"{name}.output"
            graph.insert_before(reader, nodes)
            self._shared[key] = node.outputs[0]
        return self._shared[key]

    def _apply(self, model: ir.Model, names: Sequence[str]) -> None:
        super()._apply(model, names)
        int4 = {name for name in names if self.schemes.get(name, "int4") in ("int4", FLOAT_INPUT)}
        self._applied = _quantize_tables(model, self._planned, self._heads, int4, self.block_size, self.symmetric)
        remove_dead_nodes(model)

    def unsupported_layers(self, graph: ir.Graph) -> dict[ir.Node, str]:
        """pack-qkv's packed ``Attention``: its weight has no 4-bit kernel; unpacked, Q, K and V are MatMuls."""
        reason = "packed QKV weights have no 4-bit form (without pack-qkv they are MatMuls)"
        return {node: reason for node in graph if node.domain == MS_DOMAIN and node.op_type == "Attention"}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._planned, self._applied, self._grids = {}, {}, {}
        self._source_opset = onnx_opset(model.graph.opset_imports, 1)
        name_nodes(model.graph)  # the plan names tied heads by node name
        if self.embeddings:
            self._planned = self._plan_tables(model)
        result = super().call(model)
        if result.modified:
            for name, tied in self._planned.items():
                if name in self._applied:
                    self.done("embedding tables")
                else:
                    reason = f"tied to the LM head {tied}, which stays float (one float copy is smaller)"
                    self.refuse("embedding tables", reason)
            if self._applied:
                shared = sum(1 for name in self._applied if self._planned[name])
                eight = sum(1 for weight in self._applied.values() if weight.bits == 8)
                widths = f"{len(self._applied) - eight} int4" + (f", {eight} 8-bit (the head's grid)" if eight else "")
                self.note(
                    f"{len(self._applied)} embedding tables in GatherBlockQuantized ({widths})"
                    + (f", {shared} sharing its tied LM head's packed weight" if shared else "")
                    + f"; {_OUT_OF_RANGE_IDS}"
                )
            result = self.result(
                model,
                modified=True,
                twin=result.twin,
                fitted_to_samples=result.fitted_to_samples,
                fitted_to_checked=result.fitted_to_checked,
            )
        elif self._planned:
            # The tables follow the layers (README): a run that quantizes none leaves them float, and says so.
            for _ in self._planned:
                self.refuse("embedding tables", "no layer was quantized, and the tables are quantized only beside them")
            result = self.result(model, modified=False)
        return result

    def _plan_tables(self, model: ir.Model) -> dict[str, str | None]:
        """The tables to quantize, each with the layer it is tied to (its head) or None; refusals noted."""
        heads = {}
        for layer in find_layers(model.graph, self.kinds)[0]:
            heads.setdefault(layer.weight.shape, []).append(layer)
        planned: dict[str, str | None] = {}
        refused: set[str] = set()
        for node in model.graph:
            if not row_lookup(node):
                continue
            table = node.inputs[0]
            array = constant_array(table)
            if array is None or array.dtype != np.float32 or array.ndim != 2:
                continue
            if table.name in planned or table.name in refused:
                continue
            if array.size < _MIN_TABLE_ELEMENTS:
                refused.add(table.name)
                self.refuse("embedding tables", _SMALL_TABLE)
                continue
            tied = next(
                (layer for layer in heads.get(array.shape[::-1], []) if np.array_equal(layer.weight.T, array)), None
            )
            reason = None
            grid = self._grid(tied) if tied is not None else None
            lookups = [user for user, _ in table.uses() if user.op_type == "Gather"]
            # Any lookup of the table that a glob matches keeps it float, not only the first one met here.
            if any(excluded(Layer(lookup, "gather", array, None), self.exclude) for lookup in lookups):
                reason = "matched by --exclude"
            elif array.shape[1] % self.block_size:
                reason = f"its width {array.shape[1]} is not a multiple of the block size {self.block_size}"
            elif any(user.graph is not model.graph for user, _ in table.uses()):
                # Only the main graph's lookups are rewritten: a body's would keep the float table beside the copy.
                reason = "read inside an If/Loop/Scan body, whose lookups this pass does not rewrite"
            elif not np.isfinite(array).all():  # a block holding one came back all NaN
                reason = "it holds NaN or Inf, which no scale stands for"
            elif any(
                (not row_lookup(user) or index != 0)
                # The dynamo exporter's tie: the head reads Transpose(table).
                and not (tied is not None and user in (tied.node, tied.node.inputs[1].producer()))
                for user, index in table.uses()
            ):
                reason = "read by more than row lookups (a fused op, a head not quantized here)"
            elif tied is not None and _shared_beyond(tied):
                reason = (
                    "its transposed copy is read by another layer than its tied head (two heads): one packed "
                    "weight cannot serve both, so the table stays float, stored once"
                )
            elif tied is not None and (grid.has_offsets if grid is not None else self.method == "hqq"):
                reason = (
                    "tied to an LM head whose zero points are float (HQQ's, or its grid's), "
                    "which GatherBlockQuantized cannot read: the table stays float"
                )
            if reason is not None:
                refused.add(table.name)
                self.refuse("embedding tables", reason)
            else:
                planned[table.name] = tied.name if tied is not None else None
        return planned

    # -- the twin ------------------------------------------------------------------------

    def twin_layer(self, twin: Int8Twin, layer: Layer, *, rounded_inputs: bool = True) -> None:
        if self.scheme(layer) == "int8":
            quantized = quantize_weight(layer.weight, 1, reduce_range=self.reduce_range)
            twin.quantize_input(layer)
            twin.set_weight(layer, claimed_weight(layer.weight, quantized, layer.name))
            return
        if layer.float16:
            _float32_island(twin, layer)
        exact = self.weight(layer)
        x, node, split = layer.activation, layer.node, self._split(layer)
        prefix = f"{node.name}.twin"
        graph = twin.model.graph
        twin.set_weight(layer, exact.stored().dequantize())
        if self._level(layer) == 4:
            source = x
            if split is not None:  # zeroed before the kernel, added back in float below
                zeroed = _zero_channels(graph, x, split, exact.k)
                zeroed.name = f"{prefix}_outliers_zeroed"
                zeroed.outputs[0].name = f"{zeroed.name}.output"
                graph.insert_before(node, zeroed)
                source = zeroed.outputs[0]
            if rounded_inputs:
                _quantize_input_blocks(twin.model, layer, self.block_size, source)
            elif source is not x:
                node.replace_input_with(0, source)
        if exact.has_offsets or split is not None:
            # The block offsets and outlier channels read the float input, as the rewrite's MatMuls do,
            # after the layer's own product.
            extra = _extra_inputs(graph, x, exact.k, self.block_size, exact.has_offsets, split)
            for index, made in enumerate(extra):
                made.name = f"{prefix}_{made.name}_{index}"
                made.outputs[0].name = f"{made.name}.output"
            table = _correction_table(exact, split)
            corrected = _corrected(
                graph, extra[-1].outputs[0], node.outputs[0], table, prefix, offsets=exact.has_offsets
            )
            twin.follow_output(node, [*extra, *corrected], "twin_stored")

    def _twin(self, source: ir.Model, names: Sequence[str], *, smoothed: bool, rounded_inputs: bool = True) -> Twin:
        """The twin of the result (see ``Twin``); without ``rounded_inputs``, the same with every int4 layer's
        input left float (its ``unrounded`` twin)."""
        spare = source.clone() if rounded_inputs and self.accuracy_level == 4 else None  # Int8Twin writes into it
        float_source = self._twin_source(source, smoothed)
        twin = Int8Twin(source)
        levels: list[int] = []
        int8, eight, offsets, split = 0, 0, 0, 0
        split_inputs: dict[str, OutlierChannels] = {}
        for layer in twin.layers(self.kinds, names, float16=self.float16_layers):
            if (channels := self._split(layer)) is not None:  # before twin_layer reroutes the layer's input
                split += 1
                split_inputs[layer.activation.name] = channels
            self.twin_layer(twin, layer, rounded_inputs=rounded_inputs)
            if self.scheme(layer) == "int8":
                int8 += 1
            else:
                levels.append(self._level(layer) if rounded_inputs else 0)
                offsets += self.weight(layer).has_offsets
                eight += self.weight(layer).bits == 8
        graph = twin.model.graph
        for name, weight in self._applied.items():
            dequantized = add_initializer(graph, f"{name}.twin", np.ascontiguousarray(weight.dequantize().T))
            table = graph.initializers.get(name) or next(v for n in graph for v in n.outputs if v.name == name)
            for user, index in list(table.uses()):
                if user.op_type == "Gather" and index == 0:
                    user.replace_input_with(0, dequantized)
        rounded = levels.count(4)
        if rounded == len(levels):
            inputs = " and inputs int8 per block (accuracy_level 4)" if rounded else ""
        else:
            inputs = f", {rounded} of them with inputs int8 per block (accuracy_level 4)" if rounded else ""
        if split_inputs and rounded_inputs:
            ratios = sorted(channels.ratio for channels in split_inputs.values())
            samples = (
                "generated samples (--calibration chooses them on real data)"
                if self.samples_generated
                else "calibration samples"
            )
            self.note(
                f"the {self.outlier_channels} largest channels of {len(split_inputs)} layer inputs (read by {split} "
                f"layers; the largest {ratios[0]:.1f}-{ratios[-1]:.1f}x its input's median channel, max |x| on the "
                f"{samples}) "
                "kept float beside the int8 rounding of accuracy_level 4: zeroed before MatMulNBits, added back exactly"
            )
        if split:
            kept = self.outlier_channels
            inputs += f" ({split} with {kept} outlier input channels zeroed there, added back in float)"
        tables = f", {len(self._applied)} embedding tables dequantized" if self._applied else ""
        fallback = (
            f", {int8} int8 layers' weights int8-dequantized and inputs through DynamicQuantizeLinear" if int8 else ""
        )
        shifted = f" ({offsets} as uint8 zero points plus float block offsets)" if offsets else ""
        widths = f" ({eight} of them on an 8-bit grid)" if eight else ""
        layers = f"{len(names) - int8} layers' weights int4-dequantized{widths}{shifted}{inputs}{fallback}"
        description = f"{self._twin_base(smoothed)} with {layers}{tables}, in float32"
        # Only an integer kernel (level 4, or the int8 fallback) can round a tie the other way.
        kind = "int4" if rounded or int8 else "int4-float"
        unrounded = None
        if spare is not None and rounded:  # int8 layers keep their rounding in it (they round in every kernel)

            def unrounded() -> Twin:
                return self._twin(spare.clone(), names, smoothed=smoothed, rounded_inputs=False)

        return Twin(
            twin.finish(),
            kind,
            description,
            checkpoints=twin.checkpoints,
            layer_outputs=twin.layer_outputs,
            source=float_source,
            unrounded=unrounded,
        )

    def _sensitivity(self, model: ir.Model, layers: list[Layer], batches, reference) -> dict[str, float]:
        if len(layers) <= _EXHAUSTIVE_LAYERS:
            return super()._sensitivity(model, layers, batches, reference)
        inputs = sample_layer_inputs(model, layers, batches)
        scores = {}
        for layer in track(layers, "sensitivity: local int4 error per layer"):
            x = inputs[layer.activation.name].astype(np.float64)
            scores[layer.name] = self._local_error(x, layer, rounded_input=self.accuracy_level == 4)
        inputs_rounded = ", its input rounded to int8 per block as at accuracy_level 4" if self.accuracy_level else ""
        self.note(
            f"sensitivity of {len(layers)} layers estimated locally "
            f"(relative int4 error of each layer's output{inputs_rounded})"
        )
        return scores

    def _local_alternative_error(self, x: np.ndarray, layer: Layer, scheme: str) -> float | None:
        if scheme == FLOAT_INPUT:
            return self._local_error(x, layer, rounded_input=False)
        return super()._local_alternative_error(x, layer, scheme)

    def _local_error(self, x: np.ndarray, layer: Layer, *, rounded_input: bool) -> float:
        """Relative error (``output_error``) of ``layer``'s output on input rows ``x`` with its 4-bit weight,
        the input rounded to int8 per block as the kernel does at accuracy_level 4 where ``rounded_input``."""
        exact = x @ layer.weight.astype(np.float64)
        used = x
        if rounded_input:
            split = self._outliers.get(layer.name)
            kept = x.copy()
            if split is not None:
                kept[:, split.indices] = 0.0
            used = _round_input_blocks(kept, self.block_size).astype(np.float64)
            if split is not None:
                used[:, split.indices] = x[:, split.indices]
        return output_error(used @ self.weight(layer).dequantize().astype(np.float64), exact)


def _orientation(layer: Layer) -> tuple[str, bool]:
    """The constant ``layer`` reads its weight from, and whether it reads it transposed.

    One constant can be read both ways round (``MatMul(x, W)`` beside ``Gemm(h, W, transB=1)`` or
    ``MatMul(h, Transpose(W))``): layers share 4-bit values (a recovered grid, one GPTQ fit) only
    where they read the constant the same way round.
    """
    trans_b = layer.kind == "gemm" and bool(layer.node.attributes.get_int("transB", 0))
    name = layer.source.name if layer.source is not None and layer.source.name else layer.name
    return name, layer.transposed != trans_b


def _quantize_tables(
    model: ir.Model,
    planned: Mapping[str, str | None],
    heads: Mapping[str, tuple[ir.Value, Int4Weight]],
    quantized_layers: set[str],
    block_size: int,
    symmetric: bool,
) -> dict[str, Int4Weight]:
    """Rewrite the planned tables' Gathers into GatherBlockQuantized; the tables done, with their values.

    An untied table is stored as uint8 ``[rows, width/2]`` blocked along its last axis.
    A table tied to a head quantized in this run reads the head's packed weight
    ``[rows, blocks, block/2]`` (``[rows, blocks, block]`` and ``bits=8`` for a head on an
    8-bit grid; quantize_axis 2) and its lookups are reshaped back to
    ``[ids..., width]``; a tied table whose head is float stays float.
    """
    graph = model.graph
    done: dict[str, tuple[list[ir.Value], Int4Weight, bool]] = {}
    for node in list(graph):
        if not row_lookup(node):
            continue
        table = node.inputs[0]
        if table is None or table.name not in planned:
            continue
        tied = planned[table.name]
        if tied is not None and tied not in quantized_layers:
            continue
        if table.name not in done:
            head = heads[tied] if tied is not None else None
            done[table.name] = _table_inputs(graph, table, head, block_size, symmetric)
        parameters, weight, blocked = done[table.name]
        prefix = node.name or table.name
        attributes = [
            ir.AttrInt64("bits", weight.bits),  # 8 where the head it shares is on an 8-bit grid
            ir.AttrInt64("block_size", block_size),
            ir.AttrInt64("gather_axis", 0),
            ir.AttrInt64("quantize_axis", 2 if blocked else 1),
        ]
        inputs = [parameters[0], node.inputs[1], *parameters[1:]]
        lookup = ir.Node(MS_DOMAIN, "GatherBlockQuantized", inputs, attributes=attributes, name=f"{prefix}_int4")
        added = [lookup]
        result = lookup.outputs[0]
        if blocked:
            ids_shape = ir.Node("", "Shape", [node.inputs[1]], name=f"{prefix}_ids_shape")
            width = add_initializer(graph, f"{prefix}.width", np.array([weight.k], dtype=np.int64))
            shape = ir.Node("", "Concat", [ids_shape.outputs[0], width], attributes=[ir.AttrInt64("axis", 0)])
            shape.name = f"{prefix}_rows_shape"
            rows = ir.Node("", "Reshape", [result, shape.outputs[0]], name=f"{prefix}_rows")
            added += [ids_shape, shape, rows]
            result = rows.outputs[0]
        graph.insert_before(node, added)
        replace_value(node.outputs[0], result, inherit=True)
    return {name: weight for name, (_, weight, _) in done.items()}


def _table_inputs(
    graph: ir.Graph,
    table: ir.Value,
    head: tuple[ir.Value, Int4Weight] | None,
    block_size: int,
    symmetric: bool,
) -> tuple[list[ir.Value], Int4Weight, bool]:
    """GatherBlockQuantized's data, scales and zero points for ``table``; its values; whether blocked (tied).

    Zero points are always written, the symmetric ones too (8, or 128 at 8 bits): ONNX Runtime's CPU
    lookup defaults to those for uint8 data, but its CUDA lookup took 0 (onnxruntime issue #31692),
    which would shift every row by 8 (128) steps.
    """
    name = table.name
    if head is not None:
        data, weight = head
        scales = add_initializer(graph, f"{name}.scales", weight.scales[..., None])
        # Packed along the last axis like the data; a last axis of one block holds one nibble per byte.
        zero_points = weight.explicit_zero_points()[..., None]
        return [data, scales, add_initializer(graph, f"{name}.zero_points", zero_points)], weight, True
    array = constant_array(table)
    weight = recover_grid(array.T, block_size)  # a 4-bit checkpoint's table, exactly, where uint8 zero points hold it
    if weight is None or weight.has_offsets:
        weight = quantize_rtn(array.T, block_size, symmetric=symmetric)
    rows = array.shape[0]
    parameters = [
        add_initializer(graph, f"{name}.int4", weight.packed().reshape(rows, -1)),
        add_initializer(graph, f"{name}.scales", weight.scales),
    ]
    parameters.append(add_initializer(graph, f"{name}.zero_points", pack_nibbles(weight.explicit_zero_points(), pad=8)))
    return parameters, weight, False


def _float32_island(twin: Int8Twin, layer: Layer) -> None:
    """Make a float16 layer of ``twin`` compute in float32: its input (and a Gemm's C) widened, its result rounded to
    float16 after. ONNX Runtime 1.32's float16 MatMulNBits on CPU gives the float32 kernel's result rounded to
    float16 (equal on every element, accuracy_level 0 and 4, float16 scales), so the layer's float32 twin then
    stands for it."""
    graph, node = twin.model.graph, layer.node
    widen = ir.Node("", "Cast", [node.inputs[0]], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)])
    widen.name = f"{node.name}_twin_float32"
    widen.outputs[0].name = f"{widen.name}.output"
    graph.insert_before(node, widen)
    node.replace_input_with(0, widen.outputs[0])
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        twin.set_input(node, 2, layer.bias)
    narrow = ir.Node("", "Cast", [node.outputs[0]], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT16)])
    narrow.name = f"{node.name}_twin_float16"
    twin.follow_output(node, [narrow], "twin_float32")
    node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)


def _quantize_input_blocks(model: ir.Model, layer: Layer, block_size: int, source: ir.Value | None = None) -> None:
    """Route ``layer``'s input (or ``source``, what the layer reads instead) through int8 per row and per
    block of ``block_size`` along K, in float ops.

    What MatMulNBits does with A at accuracy_level 4: each row's K values, padded with
    zeros to whole blocks, are cut into blocks; a block is scaled by its largest
    magnitude / 127 (times 127 / magnitude), rounded, and scaled back. Written rank-free: ``[-1, K]`` → pad →
    ``[-1, blocks, block]`` → quantize → back to ``[-1, K]`` → the input's shape.
    """
    graph, node = model.graph, layer.node
    k = layer.weight.shape[0]
    padded = -(-k // block_size) * block_size
    prefix = f"{node.name}.twin_a"
    opset = onnx_opset(model.opset_imports, 1)

    def constant(suffix: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, f"{prefix}_{suffix}", array)

    def op(op_type: str, *inputs: ir.Value, **attributes: int) -> ir.Value:
        made = ir.Node("", op_type, list(inputs), attributes=[ir.AttrInt64(n, v) for n, v in attributes.items()])
        made.name = f"{prefix}_{op_type.lower()}_{len(nodes)}"
        made.outputs[0].name = f"{made.name}.output"
        nodes.append(made)
        return made.outputs[0]

    nodes: list[ir.Node] = []
    source = layer.activation if source is None else source
    shape = op("Shape", source)
    rows = op("Reshape", source, constant("rows", np.array([-1, k], dtype=np.int64)))
    if padded != k:
        rows = op("Pad", rows, constant("pads", np.array([0, 0, 0, padded - k], dtype=np.int64)))
    blocks = op("Reshape", rows, constant("blocks", np.array([-1, padded // block_size, block_size], dtype=np.int64)))
    magnitude = op("Abs", blocks)
    if opset >= 18:
        peak = op("ReduceMax", magnitude, constant("axes", np.array([-1], dtype=np.int64)), keepdims=1)
    else:
        peak = op("ReduceMax", magnitude, keepdims=1)
        nodes[-1].attributes["axes"] = ir.AttrInt64s("axes", [-1])
    levels = constant("levels", np.array(127.0, dtype=np.float32))
    scale = op("Div", peak, levels)
    # The kernel multiplies by 127 / peak, not by 1 / scale: on inputs that are multiples of
    # one step (a 4-bit table's rows) the two round ties apart (measured: 2e-2 vs 2e-6).
    inverse = op("Div", levels, op("Max", peak, constant("tiny", np.array(1e-30, dtype=np.float32))))
    dequantized = op("Mul", op("Round", op("Mul", blocks, inverse)), scale)
    flat = op("Reshape", dequantized, constant("flat", np.array([-1, padded], dtype=np.int64)))
    if padded != k:
        flat = op(
            "Slice",
            flat,
            constant("starts", np.array([0], dtype=np.int64)),
            constant("ends", np.array([k], dtype=np.int64)),
            constant("slice_axes", np.array([1], dtype=np.int64)),
        )
    result = op("Reshape", flat, shape)
    graph.insert_before(node, nodes)
    node.replace_input_with(0, result)


def _extra_inputs(
    graph: ir.Graph, x: ir.Value, k: int, block_size: int, offsets: bool, split: OutlierChannels | None
) -> list[ir.Node]:
    """What a layer's exact float correction reads of ``x`` (the last node's output; not inserted):
    with ``offsets`` its block sums (``_block_sums``), then ``split``'s channels (``_outlier_columns``),
    side by side along the last axis (``_side_by_side``)."""
    by_reduce = _sums_by_reduce(k, block_size, onnx_opset(graph.opset_imports, 1))
    nodes = _block_sums(graph, x, k, block_size, by_reduce=by_reduce) if offsets else []
    parts = [nodes[-1].outputs[0]] if nodes else []
    if split is not None:
        nodes.append(_outlier_columns(graph, x, split))
        parts.append(nodes[-1].outputs[0])
    if len(parts) == 2:
        nodes.append(_side_by_side(parts))
    return nodes


def _sums_by_reduce(k: int | None, block_size: int, opset: int | None) -> bool:
    """Whether ``_block_sums`` reduces (K fills whole blocks, opset 15 or later, whose ``Shape`` takes ``end``)
    rather than multiplying by ``P``; an unknown K or opset counts as fitting."""
    return (k is None or k % block_size == 0) and (opset is None or opset >= 15)


def _block_sums(graph: ir.Graph, x: ir.Value, k: int, block_size: int, *, by_reduce: bool) -> list[ir.Node]:
    """``x``'s sums over each block of its last axis, ``[..., n_blocks]`` (the last node's output; not inserted).

    ``by_reduce`` (``_sums_by_reduce``: K fills whole blocks, opset 15 or later):
    ``ReduceSum(Reshape(x, Concat(Shape(x)[:-1], [n_blocks, block])), axes=-1)``; the leading dims are read at
    run time, not from a declared rank, which a ``value_info`` may misstate. Else ``x @ P``, ``P`` the
    ``[K, n_blocks]`` 0/1 matrix (one initializer per graph, K and block size). The two give the same sums; at
    one row the MatMul is the slower by far: ONNX Runtime 1.32's CPU ``MatMul`` of 1x576 by 576x18 takes
    3.3 us, and SmolLM2's int4 decode step at 2 threads went from 13.5 to 12.5 ms with its 120 block sums
    reduced instead (docs/benchmarks.md, *Block sums by ReduceSum*).
    """
    if by_reduce:
        blocks = k // block_size
        leading = ir.Node("", "Shape", [x], attributes=[ir.AttrInt64("start", 0), ir.AttrInt64("end", -1)])
        tail = _graph_constant(graph, f"block_shape_{blocks}x{block_size}", np.array([blocks, block_size]))
        target = ir.Node("", "Concat", [leading.outputs[0], tail], attributes=[ir.AttrInt64("axis", 0)])
        reshape = ir.Node("", "Reshape", [x, target.outputs[0]])
        axes = _graph_constant(graph, "last_axis", np.array([-1]))
        reduce = ir.Node("", "ReduceSum", [reshape.outputs[0], axes], attributes=[ir.AttrInt64("keepdims", 0)])
        for node, name in ((leading, "leading_dims"), (target, "block_shape"), (reshape, "blocks")):
            node.name = name
            node.outputs[0].name = f"{x.name}_{name}.output"
        reduce.name = "block_sums"
        return [leading, target, reshape, _named(reduce, x)]
    indicator = _graph_constant(graph, f"block_sums_{k}x{block_size}", _block_sums_matrix(k, block_size))
    return [_named(ir.Node("", "MatMul", [x, indicator], name="block_sums"), x)]


def _graph_constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """The initializer ``graphopt.exact.<name>`` holding ``array`` (int64 where integer), made once per graph;
    a foreign tensor or node output of that name is left alone (the new one gets a suffix)."""
    if array.dtype.kind in "iu":
        array = array.astype(np.int64)
    base = f"{EXACT_CORRECTION_PREFIX}{name}"
    existing = graph.initializers.get(base)
    found = constant_array(existing) if existing is not None else None
    if found is not None and found.dtype == array.dtype and np.array_equal(found, array):
        return existing
    computed = {value.name for node in graph for value in node.outputs}
    name, suffix = base, 0
    while name in graph.initializers or name in computed:
        suffix += 1
        name = f"{base}_{suffix}"
    return add_initializer(graph, name, array)


def _outlier_columns(graph: ir.Graph, x: ir.Value, split: OutlierChannels) -> ir.Node:
    """``Gather(x, channels, axis=-1)``: the outlier channels of ``x``, ``[..., count]``."""
    channels = add_initializer(graph, f"{x.name}.outlier_channels", split.indices.astype(np.int64))
    return _named(ir.Node("", "Gather", [x, channels], attributes=[ir.AttrInt64("axis", -1)], name="outliers"), x)


def _side_by_side(parts: Sequence[ir.Value]) -> ir.Node:
    """``Concat(parts, axis=-1)``."""
    node = ir.Node("", "Concat", list(parts), attributes=[ir.AttrInt64("axis", -1)], name="sums_and_outliers")
    node.outputs[0].name = f"{parts[0].name}.{node.name}"
    return node


def _named(node: ir.Node, x: ir.Value) -> ir.Node:
    node.outputs[0].name = f"{x.name}_{node.name}.output"
    return node


def _correction_table(weight: Int4Weight, split: OutlierChannels | None) -> np.ndarray:
    """The ``[n_blocks (+ channels), N]`` matrix ``_extra_inputs``' output is multiplied by: the block offsets
    (``Int4Weight.offsets``: what uint8 zero points miss of float ones), then the stored weight's rows
    of ``split``'s channels (zeroed in the kernel's input; their block sums already carry the offsets)."""
    parts = [] if weight.offsets() is None else [weight.offsets()]
    if split is not None:
        parts.append(weight.stored().dequantize()[split.indices])
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _corrected(
    graph: ir.Graph, extra: ir.Value, product: ir.Value, table: np.ndarray, prefix: str, *, offsets: bool
) -> list[ir.Node]:
    """``product + extra @ table`` (the last node's output), ``table`` a new initializer (named for the
    block ``offsets`` it starts with, or for the outlier rows that are all it holds)."""
    kind = "block_offsets" if offsets else "outlier_rows"
    weights = add_initializer(graph, f"{EXACT_CORRECTION_PREFIX}{prefix}.{kind}", table)
    correction = ir.Node("", "MatMul", [extra, weights], name=f"{prefix}_{kind}")
    total = ir.Node("", "Add", [product, correction.outputs[0]], name=f"{prefix}_with_{kind.split('_')[0]}")
    for node in (correction, total):
        node.outputs[0].name = f"{node.name}.output"
    return [correction, total]


def _zero_channels(graph: ir.Graph, x: ir.Value, split: OutlierChannels, width: int) -> ir.Node:
    """``Mul(x, mask)``, ``mask`` 0 at ``split``'s channels of ``width`` (not inserted, named by the caller)."""
    mask = add_initializer(graph, f"{EXACT_CORRECTION_PREFIX}{x.name}.outlier_mask", split.mask(width))
    node = ir.Node("", "Mul", [x, mask], name="outliers_zeroed")
    node.outputs[0].type, node.outputs[0].shape = x.type, x.shape
    return node


@functools.lru_cache(maxsize=16)
def _block_sums_matrix(k: int, block_size: int) -> np.ndarray:
    """``P`` ``[K, n_blocks]``: 1 where row k belongs to block k // block_size (read-only, one per shape)."""
    matrix = np.zeros((k, -(-k // block_size)), dtype=np.float32)
    matrix[np.arange(k), np.arange(k) // block_size] = 1.0
    matrix.flags.writeable = False
    return matrix


def _probe_weight(weight: Int4Weight, bits: int, offsets: bool, zero_points: bool) -> Int4Weight:
    """A timing probe's values in the form (``bits``, float / uint8 / no zero points) of the layer it stands for."""
    values = weight.values
    if bits != weight.bits:  # seeded by the copy's own values: each copy of a probe reads a weight of its own
        seed = int(weight.values.sum(dtype=np.int64))
        values = np.random.default_rng(seed).integers(0, 1 << bits, weight.values.shape).astype(np.uint8)
    middle = (1 << bits) // 2
    if offsets:
        zero = np.full(weight.scales.shape, middle - 0.25, dtype=np.float32)
    else:
        zero = np.full(weight.scales.shape, middle - 1, dtype=np.uint8) if zero_points else None
    return Int4Weight(values, weight.scales, zero, weight.k, weight.block_size, bits)


def _round_input_blocks(x: np.ndarray, block_size: int) -> np.ndarray:
    """``x [rows, K]`` rounded as MatMulNBits rounds its input at accuracy_level 4 (``_quantize_input_blocks``),
    in float32 as the kernel does (float64 rounds a tie the other way now and then)."""
    x = np.asarray(x, dtype=np.float32)
    rows, k = x.shape
    padded = -(-k // block_size) * block_size
    blocks = np.pad(x, ((0, 0), (0, padded - k))).reshape(rows, -1, block_size)
    peak = np.abs(blocks).max(axis=-1, keepdims=True)
    rounded = np.rint(blocks * (127.0 / np.maximum(peak, 1e-30))) * (peak / 127.0)
    return rounded.reshape(rows, padded)[:, :k]


def _shared_beyond(head: Layer) -> bool:
    """Whether ``head`` reads its tied table through a ``Transpose`` that another node reads too (a second head)."""
    weight = head.node.inputs[1]
    transpose = weight.producer() if weight is not None else None
    if transpose is None or transpose.op_type != "Transpose":
        return False
    return any(user is not head.node for user, _ in weight.uses())
