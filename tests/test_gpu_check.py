"""benchmarks/gpu_check.py without a GPU: its arguments, plan, step runner, tables, and a dry run on the CPU."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_arguments(gpu_check, capsys):
    args = gpu_check.parse_args([])
    assert args.ep == "cuda" and args.models == list(gpu_check.MODELS) and args.steps == list(gpu_check.STEPS)
    args = gpu_check.parse_args(["--ep", "cpu", "--models", "example,bert_legacy", "--steps", "fp16"])
    assert args.models == ["example", "bert_legacy"] and args.steps == ["fp16"]
    for bad in (["--models", "resnet"], ["--steps", "compare,speed"], ["--budget", "0"]):
        with pytest.raises(SystemExit) as stopped:
            gpu_check.parse_args(bad)
        assert stopped.value.code == 2
    assert "resnet" in capsys.readouterr().err


def test_plan_runs_the_cuda_path(gpu_check, tmp_path):
    steps = gpu_check.plan(gpu_check.parse_args([]), tmp_path)
    names = [step.name for step in steps]
    assert names[:3] == ["pytest on CUDA", "optimize example default", "compare example default"]
    assert {"compare bert_legacy fp16", "ablation bert_legacy", "ablation llama_kv_legacy"} <= set(names)
    compare = steps[2]
    assert compare.needs == ["optimize example default"]
    assert compare.command[compare.command.index("--ep") + 1] == "cuda"
    fp16 = next(step for step in steps if step.name == "optimize example fp16")
    assert "--fp16" in fp16.command and fp16.command[fp16.command.index("--target") + 1] == "cuda"
    ablation = next(step for step in steps if step.name == "ablation llama_kv_legacy")
    fusions = ablation.command[ablation.command.index("--fusions") + 1].split(",")
    assert fusions == gpu_check.default_cuda_fusions() and "fuse-attention" in fusions
    assert all(step.timeout <= 180 for step in steps)
    merged = next(step for step in steps if step.name == "optimize llama_kv_legacy int4")
    assert "--passes" not in merged.command, "merge-matmul-nbits is in the cuda default"
    unmerged = next(step for step in steps if step.name == "optimize llama_kv_legacy int4-unmerged")
    listed = unmerged.command[unmerged.command.index("--passes") + 1].split(",")
    assert "merge-matmul-nbits" not in listed and {"quantize-int4", "fuse-attention"} <= set(listed)
    families = [f"{verb} {name} default" for name in gpu_check.FAMILY_MODELS for verb in ("optimize", "compare")]
    # compare --generate last, on the models the earlier steps optimized (not optimized again).
    assert names[-2:] == ["generate llama_kv_legacy default", "generate llama_kv_legacy int4"]
    generate = steps[-1]
    assert "--generate" in generate.command and generate.needs == ["optimize llama_kv_legacy int4"]
    assert names.count("optimize llama_kv_legacy default") == 1
    assert names[-6 - len(families) : -2] == [
        "optimize llama_kv_legacy int4",
        "compare llama_kv_legacy int4",
        "optimize llama_kv_legacy int4-unmerged",
        "compare llama_kv_legacy int4-unmerged",
        *families,
    ]


def test_a_failed_step_is_a_row_not_a_crash(gpu_check):
    runner = gpu_check.Runner(60, {})
    python = sys.executable
    failed = runner.run(gpu_check.Step("fails", [python, "-c", "import sys; sys.exit('boom: no GPU')"], 30))
    slow = runner.run(gpu_check.Step("slow", [python, "-c", "import time; time.sleep(30)"], 0.5))
    after = runner.run(gpu_check.Step("after", [python, "-c", "pass"], 30, needs=["fails"]))
    missing = runner.run(gpu_check.Step("missing", [python, "-c", "pass"], 30, [Path("/nonexistent/x.json")]))
    ok = runner.run(gpu_check.Step("ok", [python, "-c", "print('hi')"], 30))
    summary = runner.run(gpu_check.Step("tests", [python, "-c", "print('1 passed in 3s')"], 30, summary=True))
    assert (failed.status, failed.detail) == ("failed", "exit 1: boom: no GPU")
    assert slow.status == "timed out" and slow.seconds < 10
    assert after.status == "skipped" and "needs fails" in after.detail
    assert missing.status == "failed" and "x.json" in missing.detail
    assert ok.status == "ok" and ok.stdout == "hi\n" and ok.detail == ""
    assert summary.detail == "1 passed in 3s"
    spent = gpu_check.Runner(0, {})
    assert spent.run(gpu_check.Step("late", [python, "-c", "pass"], 30)).status == "skipped"


def _comparison(ep: str, available: bool = True) -> dict:
    batch = {
        "before": {"median_ms": 2.0},
        "after": {"median_ms": 1.5},
        "ratio": {"ratio": 0.75, "low": 0.7, "high": 0.8, "trustworthy": True, "warning": ""},
    }
    accuracy = [{"max_abs_error": 3e-4, "cosine": 0.99999}, {"max_abs_error": 1e-3, "cosine": None}]
    provider = {"ep": ep, "available": available, "reason": "" if available else "no GPU is usable"}
    provider.update(batches=[batch] if available else [], accuracy=accuracy if available else [])
    return {"providers": [provider], "warnings": ["output 'y' is float16[1] in AFTER, float32[1] in BEFORE"]}


def test_tables(gpu_check, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_comparison("cuda")))
    ok = gpu_check.StepResult("compare", "ok")
    row = gpu_check.compare_row("bert_legacy", "fp16", path, ok, "cuda")
    assert (row.before_ms, row.after_ms, row.ratio, row.cosine, row.max_abs) == (
        2.0,
        1.5,
        (0.75, 0.7, 0.8),
        0.99999,
        1e-3,
    )
    assert "float16[1] in AFTER" in row.note
    path.write_text(json.dumps(_comparison("cuda", available=False)))
    assert gpu_check.compare_row("x", "default", path, ok, "cuda").status == "skipped: no GPU is usable"
    timed_out = gpu_check.StepResult("compare", "timed out", 120, "timed out after 120 s")
    assert gpu_check.compare_row("x", "default", path, timed_out, "cuda").status == "timed out: timed out after 120 s"
    line = json.dumps({"model": "bert", "ratio_vs_cleanup": {"fuse-rms-norm": "no change", "pack-qkv": [0.9, 0.8, 1]}})
    ablations = gpu_check.ablation_rows("bert", gpu_check.StepResult("ablation", "ok", stdout=f"noise\n{line}\n"))
    assert ablations == [("bert", "fuse-rms-norm", "no change"), ("bert", "pack-qkv", "0.900 [0.800–1.000]")]
    # A run cut short by its timeout: the fusions it finished are read from the files it left.
    folder = tmp_path / "ablation"
    folder.mkdir()
    (folder / "m.cleanup.onnx").write_bytes(b"cleanup")
    (folder / "m.fuse-rms-norm.onnx").write_bytes(b"cleanup")
    (folder / "m.fuse-attention.json").write_text(json.dumps(_comparison("cuda")))
    stopped = gpu_check.StepResult("ablation m", "timed out", 180, "timed out after 180 s")
    fusions = ["fuse-rms-norm", "fuse-attention", "pack-qkv"]
    assert gpu_check.ablation_rows("m", stopped, folder, fusions) == [
        ("m", "fuse-rms-norm", "no change"),
        ("m", "fuse-attention", "0.750 [0.700–0.800]"),
        ("m", "others", "timed out: timed out after 180 s"),
    ]
    table = gpu_check.render_markdown(
        {"gpu": "NVIDIA H200, 580.1, 143771 MiB", "onnxruntime": "1.31.1"},
        "cuda",
        [row, gpu_check.CompareRow("llama", "default", "failed: exit 2: x | y")],
        ablations,
        [ok, timed_out],
        "python benchmarks/gpu_check.py",
    )
    assert (
        "NVIDIA H200" in table and "| bert_legacy | fp16 | 2.000 | 1.500 | 0.750 [0.700–0.800] | 0.9999900 |" in table
    )
    assert "failed: exit 2: x \\| y" in table and "| compare | timed out | 120 | timed out after 120 s |" in table
    for block in table.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        assert len({line.replace("\\|", "").count("|") for line in rows}) <= 1, "every row has the header's cells"


def test_without_cuda_every_step_is_a_skipped_row(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "environment", lambda ep: ({"gpu": "none"}, "no GPU is usable"))
    code = gpu_check.main(["--out", str(tmp_path)])
    assert code == 2
    table = (tmp_path / "gpu_check.md").read_text()
    assert "cannot run here: no GPU is usable" in table
    assert table.count("| skipped |") == len(gpu_check.plan(gpu_check.parse_args([]), tmp_path))
    assert "Traceback" not in capsys.readouterr().out


def _dry_run(gpu_check, tmp_path: Path, model: str, step: str) -> str:
    """The check's table for one model and step on the CPU EP (a tiny timing budget); it must exit 0."""
    code = gpu_check.main(
        ["--ep", "cpu", "--models", model, "--steps", step, "--out", str(tmp_path)]
        + ["--time-budget", "1", "--iterations", "10", "--threads", "1"]
    )
    table = (tmp_path / "gpu_check.md").read_text()
    assert code == 0, table
    return table


def _cells(table: str, model: str, variant: str) -> list[str]:
    """The cells of the comparison row of ``model`` and ``variant``."""
    row = next(line for line in table.splitlines() if line.startswith(f"| {model} | {variant} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_dry_run_on_the_cpu(gpu_check, tmp_path):
    """The same steps on the CPU EP: optimize --target cuda, then compare (a tiny timing budget)."""
    cells = _cells(_dry_run(gpu_check, tmp_path, "example", "compare"), "example", "default")
    assert float(cells[2]) > 0 and float(cells[3]) > 0 and "[" in cells[4] and float(cells[5]) > 0.9999
    assert (tmp_path / "example.default.html").exists()


def _wheel(folder: Path, name: str, module: str) -> Path:
    """A minimal pure-Python wheel holding ``module/__init__.py`` (pip installs it offline)."""
    import base64
    import hashlib
    import zipfile

    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {
        f"{module}/__init__.py": b"MARK = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for file, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{file},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    with zipfile.ZipFile(path, "w") as archive:
        for file, data in files.items():
            archive.writestr(file, data)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def test_shell_wrapper_installs_what_gpu_holds_and_puts_it_first(tmp_path):
    """The wrapper in a copy of the layout: onnxruntime-gpu from its parts, dependency wheels, then the path."""
    import os
    import subprocess

    wrapper = SCRIPT.with_suffix(".sh")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(wrapper), "--plan"], capture_output=True, text=True, env=env, check=True)
    assert "compare example default" in done.stdout and "--ep cuda" in done.stdout

    gpu = tmp_path / ".gpu"
    (gpu / "wheels").mkdir(parents=True)
    data = _packed_runtime()  # split in two parts, as --prepare leaves it
    (gpu / "ort.tar.xz.part-0").write_bytes(data[: len(data) // 2])
    (gpu / "ort.tar.xz.part-1").write_bytes(data[len(data) // 2 :])
    _wheel(gpu / "wheels", "fake_dependency", "fake_dependency")
    probe = "import os, onnxruntime, fake_dependency; print(os.environ['PYTHONPATH'].split(os.pathsep)[0])"
    script = wrapper.read_text().replace('exec "$python" benchmarks/gpu_check.py "$@"', f'exec "$python" -c "{probe}"')
    (tmp_path / "benchmarks").mkdir()
    copy = tmp_path / "benchmarks" / "gpu_check.sh"
    copy.write_text(script)
    for _ in range(2):  # the second run finds both installed
        done = subprocess.run(["bash", str(copy)], capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(gpu / "site")
    assert (gpu / "site" / "onnxruntime" / "__init__.py").exists()
    assert (gpu / "site" / "onnxruntime_gpu-0.1.dist-info" / "METADATA").exists()


def _packed_runtime() -> bytes:
    """A stand-in for onnxruntime-gpu as ``gpu_check.sh --prepare`` packs it: the wheel's files in a tar.xz."""
    import io
    import tarfile

    files = {"onnxruntime/__init__.py": b"MARK = 1\n", "onnxruntime_gpu-0.1.dist-info/METADATA": b"Name: x\n"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _graphopt_in_process(gpu_check, monkeypatch) -> None:
    """Steps that run ``graphopt`` call its ``main`` in this process (7 interpreters less to start); the runner's
    own subprocess, exit codes and output are what test_dry_run_on_the_cpu checks with real processes."""
    from optimizer import cli

    started = gpu_check.subprocess.run

    def run(command, *, cwd=None, **kwargs):
        if command[1:3] != ["-m", "optimizer.cli"]:
            return started(command, cwd=cwd, **kwargs)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(list(command[3:]))
        return gpu_check.subprocess.CompletedProcess(command, code, stdout.getvalue(), stderr.getvalue())

    monkeypatch.setattr(gpu_check.subprocess, "run", run)


def test_dry_run_of_the_int4_and_generation_rows_on_the_cpu(gpu_check, tmp_path, monkeypatch):
    """The int4 step's two variants end to end on the CPU EP, both rows in the table; then compare --generate on
    the int4 model that step optimized (and the float one it optimizes itself): time to first token, tokens/s and
    agreement. One run, as on the GPU: the int4 model is optimized once for both."""
    _graphopt_in_process(gpu_check, monkeypatch)
    table = _dry_run(gpu_check, tmp_path, "llama_kv_legacy", "int4,generate")
    assert "Generation on `cpu`" in table
    comparisons, generation = table.split("Generation on `cpu`", 1)
    for variant in ("int4", "int4-unmerged"):
        cells = _cells(comparisons, "llama_kv_legacy", variant)
        assert float(cells[2]) > 0 and float(cells[3]) > 0, cells
    default, int4 = (_cells(generation, "llama_kv_legacy", variant) for variant in gpu_check.GENERATE_VARIANTS)
    for cells in (default, int4):
        before, after = (float(x) for x in cells[4].split(" → "))
        assert before > 0 and after > 0 and "[" in cells[3] and "[" in cells[5], cells
    assert float(default[6]) == 1.0 and float(default[7]) == 1.0, "the float pipeline generates what the original does"
    assert float(int4[6]) < 1.0, "int4 on a random-weight decoder changes some next tokens"
