"""The cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

A container given 2 CPUs of a 64-core host (``docker run --cpus 2``, a Kubernetes CPU limit) sees all 64 in
``os.cpu_count()`` and, without a cpuset, in its affinity too: ONNX Runtime's default of a thread per core then
runs 64 threads in 2 CPUs' worth of time, throttled by the kernel at every period, and a timing taken so says
little about the deployed model. The quota is read from the process's own cgroup and every cgroup above it (the
smallest one binds): ``cpu.max`` under cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under v1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def affinity_cores() -> int:
    """The cores this process may be scheduled on (all the machine's where the platform has no affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def usable_cores(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """``affinity_cores()``, at most the CPU quota of the process's cgroups rounded up (1.5 CPUs: 2); at least 1."""
    cores = affinity_cores()
    quota = cgroup_cpu_quota(root, self_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return cores


def quota_capped_cores(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """``usable_cores()`` where a cgroup quota holds it below the affinity's count, else None (nothing to cap)."""
    cores = usable_cores(root, self_cgroup)
    return cores if cores < affinity_cores() else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs' worth of time per period the process's cgroups allow (quota / period), the smallest from its own cgroup
    up to the root; None where none sets a quota, or where the cgroup files cannot be read (not Linux, no cgroup
    filesystem mounted)."""
    try:
        lines = self_cgroup.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    quotas = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2's unified hierarchy ("0::/path")
            quotas += [quota for folder in _folders(root, path) if (quota := _v2_quota(folder)) is not None]
        elif "cpu" in controllers.split(","):  # cgroup v1's cpu controller ("4:cpu,cpuacct:/path")
            mount = root / controllers
            if not _is_dir(mount):
                mount = next((m for m in (root / "cpu", root / "cpu,cpuacct") if _is_dir(m)), mount)
            quotas += [quota for folder in _folders(mount, path) if (quota := _v1_quota(folder)) is not None]
    return min(quotas) if quotas else None


def _folders(mount: Path, path: str) -> list[Path]:
    """The cgroup folders from ``path``'s own up to the mount point. Inside a container the path is the host's,
    and the container's own cgroup is mounted at the root: folders that do not exist are skipped."""
    parts = [part for part in path.strip("/").split("/") if part and part != ".."]
    folders = [mount.joinpath(*parts[:count]) for count in range(len(parts), -1, -1)]
    return [folder for folder in folders if _is_dir(folder)]


def _is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder this process may look into: False, not an error, where it may not (Python 3.11's
    ``Path.is_dir`` raises ``PermissionError`` where a folder above it may not be searched)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _v2_quota(folder: Path) -> float | None:
    """``cpu.max``'s ``QUOTA PERIOD`` as CPUs; None for ``max`` (no quota) or where it is absent or unreadable."""
    try:
        fields = (folder / "cpu.max").read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return _ratio(fields[0] if fields else "max", fields[1] if len(fields) > 1 else "100000")


def _v1_quota(folder: Path) -> float | None:
    """``cpu.cfs_quota_us / cpu.cfs_period_us`` as CPUs; None for a quota of -1 (none) or where unreadable."""
    try:
        quota = (folder / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
        period = (folder / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max"
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us
