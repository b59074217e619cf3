"""Outlier channels split out of MatMulNBits' level-4 input rounding, by graph surgery (issue 14).

The experiment that preceded ``--int4-outlier-channels`` (``passes/quantization/int4.py``), kept
to reproduce its tables; the pass writes the split differently (the channels through a ``Gather``
beside the shared block sums, not one-hot columns in a per-input copy of them).

Each chosen input ``x`` of the int4 model's ``MatMulNBits`` layers gets its top-k channels (by
calibration max |x|) zeroed before the kernel (``Mul(x, mask)``) and added back exactly in float:
through the block-offsets path (``P`` with those rows zeroed plus one-hot columns, the offsets plus
the exact weight rows), or, for a layer without offsets (the 8-bit head), ``Gather`` + ``MatMul``.
docs/benchmarks.md, *Outlier channels split out of the level-4 rounding*, has the results.

Usage (``MODEL``: an int4 result with block offsets, e.g. ``graphopt optimize float.onnx -o
grid_head8.onnx --passes remove-unused --quantize int4 --quantize-outputs --calibration cal.npz``)::

    MODEL=grid_head8.onnx WORK=split CALIBRATION=cal.npz python benchmarks/int4_outlier_split.py calib
    MODEL=... WORK=... python benchmarks/int4_outlier_split.py make OUT.onnx K MODE [LEVEL]
        # MODE: all | ratio8 (inputs with a channel > 8x the median) | ln (the norms' outputs)
    MODEL=... python benchmarks/int4_outlier_split.py level0 OUT.onnx   # accuracy_level 0 everywhere
"""

import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

SRC = os.environ.get("MODEL", "grid_head8.onnx")
WORK = os.environ.get("WORK", ".")
CALIBRATION = os.environ.get("CALIBRATION", "cal.npz")


def load():
    return onnx.load(SRC)


def nbits_nodes(g):
    return [n for n in g.node if n.op_type == "MatMulNBits"]


def calib():
    import onnxruntime as ort

    m = load()
    g = m.graph
    xs = sorted({n.input[0] for n in nbits_nodes(g)})
    for x in xs:
        g.output.append(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    d = dict(np.load(CALIBRATION))
    names = [i.name for i in s.get_inputs()]
    feeds = {k: d[k] for k in names}
    outs = s.run(xs, feeds)
    res = {}
    for x, v in zip(xs, outs):
        # v: [B, S, K]; mask padded positions
        am = d["attention_mask"].astype(bool)
        res[x] = np.abs(v[am]).max(axis=0)
    np.savez(os.path.join(WORK, "calib.npz"), **{f"x{i}": res[x] for i, x in enumerate(xs)}, names=np.array(xs))
    for x in xs:
        c = res[x]
        srt = np.sort(c)[::-1]
        print(
            f"{x[:70]:70s} K={c.size} max/med={srt[0] / np.median(c):6.1f} 2nd={srt[1] / np.median(c):5.1f} "
            f"3rd={srt[2] / np.median(c):5.1f} 5th={srt[4] / np.median(c):5.1f}"
        )


def dequant(g_inits, node):
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    K, N, bits, bs = a["K"], a["N"], a["bits"], a["block_size"]
    w = numpy_helper.to_array(g_inits[node.input[1]])  # [N, nb, blob]
    sc = numpy_helper.to_array(g_inits[node.input[2]]).astype(np.float32)
    nb = (K + bs - 1) // bs
    sc = sc.reshape(N, nb)
    if bits == 4:
        q = np.stack([w & 0x0F, w >> 4], axis=-1).reshape(N, nb, bs).astype(np.float32)
        if len(node.input) > 3 and node.input[3]:
            zp = numpy_helper.to_array(g_inits[node.input[3]])
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(N, -1)[:, :nb].astype(np.float32)
        else:
            zp = np.full((N, nb), 8.0, np.float32)
    elif bits == 8:
        q = w.reshape(N, nb, bs).astype(np.float32)
        if len(node.input) > 3 and node.input[3]:
            zp = numpy_helper.to_array(g_inits[node.input[3]]).reshape(N, nb).astype(np.float32)
        else:
            zp = np.full((N, nb), 128.0, np.float32)
    else:
        raise ValueError(bits)
    W = ((q - zp[:, :, None]) * sc[:, :, None]).reshape(N, nb * bs)[:, :K]
    return W.T.copy()  # [K, N]


def set_level(m, lvl):
    for n in nbits_nodes(m.graph):
        for at in n.attribute:
            if at.name == "accuracy_level":
                at.i = lvl


def make(out, k, mode, lvl=None):
    m = load()
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    cal = np.load(os.path.join(WORK, "calib.npz"))
    names = list(cal["names"])
    cmax = {x: cal[f"x{i}"] for i, x in enumerate(names)}
    producers = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    new_inits = []
    chosen = {}
    for x in names:
        c = cmax[x]
        ratio = np.sort(c)[::-1][0] / np.median(c)
        if mode == "ratio8" and ratio <= 8.0:
            continue
        if mode == "ln" and not ("layernorm" in x or "/norm/" in x):
            continue
        outliers = np.sort(np.argsort(c)[::-1][:k])
        chosen[x] = (outliers, ratio)
    out_nodes = []
    stats = []
    for n in g.node:
        out_nodes.append(n)
        # insert masking Mul right after producer of a chosen x
        for o in n.output:
            if o in chosen:
                outliers, _ = chosen[o]
                K = cmax[o].size
                mask = np.ones(K, np.float32)
                mask[outliers] = 0.0
                mname = f"h46.mask.{o}"
                new_inits.append(numpy_helper.from_array(mask, mname))
                out_nodes.append(helper.make_node("Mul", [o, mname], [f"{o}.h46masked"], name=f"h46/mask/{o}"))
    # graph inputs can't be chosen here (all x are node outputs)
    g.ClearField("node")
    g.node.extend(out_nodes)

    # now rewrite each MatMulNBits
    producers = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pp_cache = {}
    extra_nodes = []
    for n in list(nbits_nodes(g)):
        x = n.input[0]
        if x not in chosen:
            continue
        outliers, ratio = chosen[x]
        W = dequant(inits, n)  # grid weight [K, N]
        n.input[0] = f"{x}.h46masked"
        y = n.output[0]
        adds = [c for c in consumers.get(y, []) if c.op_type == "Add" and c.name.endswith("_with_offsets")]
        if adds:
            add = adds[0]
            off_mm = producers[add.input[1]]
            sums_mm = producers[off_mm.input[0]]
            assert sums_mm.input[0] == x, (sums_mm.name, x)
            P = numpy_helper.to_array(inits[sums_mm.input[1]])
            offs = numpy_helper.to_array(inits[off_mm.input[1]])
            Wfull = W + P @ offs  # exact float weight rows
            key = x
            if key not in pp_cache:
                P2 = P.copy()
                P2[outliers, :] = 0.0
                onehot = np.zeros((P.shape[0], len(outliers)), np.float32)
                onehot[outliers, np.arange(len(outliers))] = 1.0
                Pp = np.concatenate([P2, onehot], axis=1).astype(np.float32)
                pname = f"h46.block_sums_split.{x}"
                new_inits.append(numpy_helper.from_array(Pp, pname))
                pp_cache[key] = pname
            sums_mm.input[1] = pp_cache[key]
            offp = np.concatenate([offs, Wfull[outliers, :]], axis=0).astype(np.float32)
            oname = off_mm.input[1] + ".h46split"
            new_inits.append(numpy_helper.from_array(offp, oname))
            off_mm.input[1] = oname
            stats.append((n.name, "offsets", P.shape, Pp.shape if key else None, offp.shape, ratio))
        else:
            # head: add MatMul(Gather(x, outliers), W_O)
            oname = f"h46.outlier_idx.{x}"
            new_inits.append(numpy_helper.from_array(outliers.astype(np.int64), oname))
            wname = n.name + ".h46.outlier_rows"
            new_inits.append(numpy_helper.from_array(W[outliers, :].astype(np.float32), wname))
            y_nb = y + ".h46nbits"
            n.output[0] = y_nb
            for c in consumers.get(y, []):
                for i, inp in enumerate(c.input):
                    if inp == y:
                        c.input[i] = y_nb
            extra_nodes.append(
                (
                    n,
                    [
                        helper.make_node("Gather", [x, oname], [x + ".h46outl"], axis=-1, name=n.name + "/h46/gather"),
                        helper.make_node(
                            "MatMul", [x + ".h46outl", wname], [y + ".h46outlmm"], name=n.name + "/h46/mm"
                        ),
                        helper.make_node("Add", [y_nb, y + ".h46outlmm"], [y], name=n.name + "/h46/add"),
                    ],
                )
            )
            stats.append((n.name, "gather", None, None, W[outliers, :].shape, ratio))
    if extra_nodes:
        nodes = list(g.node)
        g.ClearField("node")
        for nd in nodes:
            g.node.append(nd)
            for anchor, ex in extra_nodes:
                if nd is anchor or nd.name == anchor.name:
                    g.node.extend(ex)
    g.initializer.extend(new_inits)
    used = {i for nd in g.node for i in nd.input}
    keep = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)
    if lvl is not None:
        set_level(m, lvl)
    onnx.save(m, out)
    print(f"wrote {out}: {len(chosen)} inputs split (k={k}, mode={mode}), {len(stats)} MatMulNBits rewritten")
    for s in stats[:8]:
        print("  ", s)
    print("   ...", stats[-1])


def level0(out):
    m = load()
    set_level(m, 0)
    onnx.save(m, out)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "calib":
        calib()
    elif cmd == "make":
        make(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else None)
    elif cmd == "level0":
        level0(sys.argv[2])
