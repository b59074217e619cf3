"""The cores graphopt's sessions and timings use: the affinity, capped by a container's cgroup CPU quota."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer import cores, runtime, sessions
from optimizer.compare import timing
from passes import _kernel_timing


def _tree(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup filesystem under ``tmp_path/cg`` holding ``files``, and a /proc/self/cgroup of ``proc_line``."""
    root = tmp_path / "cg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(proc_line + "\n")
    return root, self_cgroup


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(cores, "affinity_cores", lambda: 8)


def test_a_v2_quota_caps_the_cores(tmp_path, eight_cores):
    root, self_cgroup = _tree(tmp_path, "0::/", {"cpu.max": "200000 100000\n"})
    assert cores.cgroup_cpu_quota(root, self_cgroup) == 2.0
    assert cores.usable_cores(root, self_cgroup) == 2
    assert cores.quota_capped_cores(root, self_cgroup) == 2


def test_a_fractional_quota_rounds_up_and_never_to_zero(tmp_path, eight_cores):
    root, self_cgroup = _tree(tmp_path, "0::/", {"cpu.max": "150000 100000\n"})
    assert cores.usable_cores(root, self_cgroup) == 2
    root, self_cgroup = _tree(tmp_path / "small", "0::/", {"cpu.max": "10000 100000\n"})
    assert cores.usable_cores(root, self_cgroup) == 1


def test_the_smallest_quota_from_the_own_cgroup_up_binds(tmp_path, eight_cores):
    files = {"cpu.max": "max 100000\n", "kube/cpu.max": "300000 100000\n", "kube/pod/cpu.max": "max 100000\n"}
    root, self_cgroup = _tree(tmp_path, "0::/kube/pod", files)
    assert cores.cgroup_cpu_quota(root, self_cgroup) == 3.0
    assert cores.usable_cores(root, self_cgroup) == 3


def test_no_quota_leaves_the_affinity(tmp_path, eight_cores):
    root, self_cgroup = _tree(tmp_path, "0::/", {"cpu.max": "max 100000\n"})
    assert cores.cgroup_cpu_quota(root, self_cgroup) is None
    assert cores.usable_cores(root, self_cgroup) == 8
    assert cores.quota_capped_cores(root, self_cgroup) is None


def test_a_quota_above_the_affinity_caps_nothing(tmp_path, eight_cores):
    root, self_cgroup = _tree(tmp_path, "0::/", {"cpu.max": "1600000 100000\n"})
    assert cores.usable_cores(root, self_cgroup) == 8
    assert cores.quota_capped_cores(root, self_cgroup) is None


@pytest.mark.parametrize("controllers", ["cpu,cpuacct", "cpu"])
def test_a_v1_quota_caps_the_cores(tmp_path, eight_cores, controllers):
    folder = controllers
    files = {f"{folder}/cpu.cfs_quota_us": "400000\n", f"{folder}/cpu.cfs_period_us": "100000\n"}
    root, self_cgroup = _tree(tmp_path, f"4:{controllers}:/docker/abc", files)
    assert cores.cgroup_cpu_quota(root, self_cgroup) == 4.0
    assert cores.usable_cores(root, self_cgroup) == 4


def test_a_v1_quota_of_minus_one_is_none(tmp_path, eight_cores):
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, self_cgroup = _tree(tmp_path, "1:cpu:/", files)
    assert cores.cgroup_cpu_quota(root, self_cgroup) is None


def test_unreadable_or_missing_cgroups_give_the_affinity(tmp_path, eight_cores):
    assert cores.cgroup_cpu_quota(tmp_path / "none", tmp_path / "no_self") is None
    assert cores.usable_cores(tmp_path / "none", tmp_path / "no_self") == 8
    root, self_cgroup = _tree(tmp_path, "garbage line\n0::/", {"cpu.max": "what ever\n"})
    assert cores.cgroup_cpu_quota(root, self_cgroup) is None


def test_this_machine_has_at_least_one_usable_core():
    assert 1 <= cores.usable_cores() <= cores.affinity_cores()


def test_the_timings_default_threads_follow_the_quota(monkeypatch):
    monkeypatch.setattr(cores, "affinity_cores", lambda: 8)
    monkeypatch.setattr(cores, "cgroup_cpu_quota", lambda *args: 2.0)
    assert timing.default_threads() == 2
    assert _kernel_timing.cores() == 2


def test_verification_sessions_take_the_quota_where_it_caps_the_cores(monkeypatch):
    monkeypatch.delenv(runtime.SESSION_THREADS_ENV, raising=False)
    monkeypatch.setattr(sessions, "_quota_threads", lambda: 3)
    assert runtime.session_options().intra_op_num_threads == 3
    assert runtime.session_options(sequential=True).intra_op_num_threads == 0  # timing: the deployed default
    monkeypatch.setenv(runtime.SESSION_THREADS_ENV, "1")
    assert runtime.session_options().intra_op_num_threads == 1  # the user's share wins
    monkeypatch.delenv(runtime.SESSION_THREADS_ENV)
    monkeypatch.setattr(sessions, "_quota_threads", lambda: 0)
    assert runtime.session_options().intra_op_num_threads == 0
