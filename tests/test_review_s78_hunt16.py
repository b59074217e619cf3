"""Review s78, hunt 16: real models from PyPI and scikit-learn's own data sets, and their re-spellings.

Models tried: skill-extractor 0.2.0's MLP (its shipped weights, over all-MiniLM-L6-v2 embeddings of job-posting
sentences), scikit-learn 1.9 classifiers through skl2onnx 1.20 on scikit-learn's bundled data (an MLP on the digits,
a gradient-boosted tree ensemble on the breast-cancer table, scaler + PCA + SVC on the wines), and a GRU and a
dilated Conv1d forecaster of statsmodels' Mauna Loa CO2 and sunspot series; each also as onnxslim, onnxscript's
optimizer and onnx's version converter write it, and with its inputs renamed.

``--fp16`` on the breast-cancer tree ensemble was reported applied (1 → 5 nodes): ORT's converter keeps a
``TreeEnsembleClassifier`` float32, so the result computed nothing in float16 and only cast the features to float16
and back before the trees (one real row's probability moved by 0.061) and the probabilities so after them. The pass
now declines such a model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from optimizer import api


def _tree_ensemble() -> onnx.ModelProto:
    """skl2onnx's spelling of a one-split gradient-boosted classifier: one ``TreeEnsembleClassifier``, float features
    in, ``label`` and ``probabilities`` out. The split at 1000.3 is finer than float16's spacing there (0.5)."""
    tree = helper.make_node(
        "TreeEnsembleClassifier",
        ["X"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        classlabels_int64s=[0, 1],
        class_ids=[0, 0],
        class_nodeids=[1, 2],
        class_treeids=[0, 0],
        class_weights=[-1.5, 2.0],
        nodes_falsenodeids=[2, 0, 0],
        nodes_featureids=[0, 0, 0],
        nodes_hitrates=[1.0, 1.0, 1.0],
        nodes_missing_value_tracks_true=[0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
        nodes_nodeids=[0, 1, 2],
        nodes_treeids=[0, 0, 0],
        nodes_truenodeids=[1, 0, 0],
        nodes_values=[1000.3, 0.0, 0.0],
        post_transform="LOGISTIC",
        base_values=[0.1],
    )
    graph = helper.make_graph(
        [tree],
        "trees",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_fp16_declines_a_model_that_would_compute_nothing_in_float16(tmp_path):
    source = tmp_path / "trees.onnx"
    onnx.save(_tree_ensemble(), source)
    # Away from the split, so that the rounding changes no leaf here and verification passes the result: the pass
    # was applied. (Features of 1000.26 are rounded to 1000.5, past the split: verification rolls that result back.)
    features = np.array([[998.0, 1.0], [999.0, 2.0], [1001.0, 3.0], [1002.0, 4.0]], np.float32)
    np.savez(tmp_path / "ver.npz", X=features)
    out = tmp_path / "out.onnx"
    _, report = api.optimize_with_report(
        source, ["convert-float16"], output=out, target="cuda", fp16=True, inputs=tmp_path / "ver.npz"
    )
    record = next(record for record in report.passes if record.name == "convert-float16")
    assert record.status != "applied", (record.status, record.notes)
    assert any("no op would compute in float16" in refusal for refusal in record.refusals), record.refusals
    assert "TreeEnsembleClassifier" in " ".join(record.refusals)
    assert [node.op_type for node in onnx.load(out).graph.node] == ["TreeEnsembleClassifier"]
