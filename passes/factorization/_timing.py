"""Whether a factorized projection runs faster than the whole one, measured on this machine and cached per shape.

``x [m, k] @ W [k, n]`` against ``(x @ U [k, r]) @ V [r, n]``: two kernels instead of
one, fewer multiply-adds and fewer weight bytes. Whether that is faster depends on the
kernel library, the execution provider, the thread count and the row count ``m``
(one decoded token reads the weights once; a 128-token prompt is compute-bound), so it
is measured, not guessed: for each (machine, ONNX Runtime version, EP, threads, k, n, m)
the *break-even rank* — the largest rank whose two MatMuls measured faster than the one
— is found by bisection over the rank with interleaved timing at ORT_ENABLE_ALL, and
kept in a JSON file (``$GRAPHOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphopt``, else
``~/.cache/graphopt``), so the next optimization on this machine does not time it again.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes._kernel_timing import FASTER_BELOW, SHORT_PLAN, MachineTimings, OneModel, interleaved_times, runtime_key

_CACHE_FILE = "lowrank_timing.json"


def parameter_limit(k: int, n: int) -> int:
    """The largest rank whose two factors hold fewer parameters than ``W [k, n]``: ``r (k + n) < k n``."""
    return (k * n - 1) // (k + n)


class MeasuredSpeed(MachineTimings):
    """Break-even ranks and speed ratios of factorized ``[k, n]`` projections, timed on ``target`` and cached.

    ``measure(k, n, r, m)`` (injectable for tests) returns the factorized layer's
    median time over the whole layer's at ``m`` rows; by default it builds the two
    one-layer models and times them interleaved on ONNX Runtime.
    """

    CACHE_FILE = _CACHE_FILE

    def break_even(self, k: int, n: int, m: int) -> int:
        """The largest rank at which ``[k, n]`` factorized measured faster at ``m`` rows (0: not even rank 1)."""
        key = self._key("break_even", k, n, m)
        cached = self._cache.get(key)
        if cached is not None:
            return int(cached)
        limit = parameter_limit(k, n)
        if limit < 1 or not self.ratio(k, n, 1, m) <= FASTER_BELOW:
            found = 0
        else:
            # Fewer ranks, fewer multiply-adds and weight bytes: faster below some rank, not above.
            low, high = 1, limit + 1  # low measured faster; high is assumed not
            if self.ratio(k, n, limit, m) <= FASTER_BELOW:
                low = limit
            step = max(1, limit // 32)  # a bisection to within 3 % of the limit is enough
            while high - low > step:
                middle = (low + high) // 2
                if self.ratio(k, n, middle, m) <= FASTER_BELOW:
                    low = middle
                else:
                    high = middle
            found = low
        self._cache.put(key, found)
        return found

    def ratio(self, k: int, n: int, r: int, m: int) -> float:
        """Median time of ``x [m, k] @ U [k, r] @ V [r, n]`` over ``x @ W [k, n]``, measured once per machine."""
        key = self._key("ratio", k, n, m, r)
        cached = self._cache.get(key)
        if cached is not None:
            return float(cached)
        value = float(self._measure(k, n, r, m))
        self.timed += 1
        self._cache.put(key, value)
        return value

    def _key(self, kind: str, k: int, n: int, m: int, r: int | None = None) -> str:
        shape = f"{k}x{n}" + (f"r{r}" if r is not None else "")
        return f"{kind}|{runtime_key(self.target, self.threads)}|{shape}|m{m}"

    def _time(self, k: int, n: int, r: int, m: int) -> float:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((m, k), dtype=np.float32)
        whole = _matmul_chain([rng.standard_normal((k, n), dtype=np.float32)], m)
        factors = [rng.standard_normal((k, r), dtype=np.float32), rng.standard_normal((r, n), dtype=np.float32)]
        before = OneModel(whole, {"x": x}, self.target, self.threads, "time a factorized MatMul")
        after = OneModel(_matmul_chain(factors, m), {"x": x}, self.target, self.threads, "time a factorized MatMul")
        times_before, times_after = interleaved_times(before, after, **SHORT_PLAN)  # a bisection: seven a shape
        return float(np.median(times_after) / np.median(times_before))


def _matmul_chain(weights: list[np.ndarray], m: int) -> bytes:
    """``x [m, k]`` multiplied by each weight in turn, as a serialized one-input model."""
    x = ir.Value(name="x", shape=ir.Shape([m, weights[0].shape[0]]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 18}, name="chain")
    current = x
    for index, weight in enumerate(weights):
        w = ir.Value(name=f"w{index}", shape=ir.Shape(weight.shape), type=ir.TensorType(ir.DataType.FLOAT))
        w.const_value = ir.tensor(weight, name=f"w{index}")
        graph.register_initializer(w)
        node = ir.Node("", "MatMul", [current, w], name=f"matmul{index}")
        graph.append(node)
        current = node.outputs[0]
        current.name, current.type = f"y{index}", ir.TensorType(ir.DataType.FLOAT)
        current.shape = ir.Shape([m, weight.shape[1]])
    graph.outputs.append(current)
    return ir.to_proto(ir.Model(graph, ir_version=9)).SerializeToString()
