"""The CPU's int8 dot-product features, and the int8 weight range they call for; its float Conv block.

Detection is archspec's (Spack's CPU database, pure Python, no dependencies): on Linux it
reads the kernel's flags, on macOS ``sysctl``, on Windows the ``cpuid`` instruction; a
known microarchitecture (Apple M1, say, whose ``sysctl`` names no features) adds the
features the database lists for it. graphopt only asks which of these it has:

- ``avx2``: x86's 256-bit integer SIMD, ONNX Runtime's baseline U8S8 kernels;
- ``avx512_vnni``, ``avx_vnni``: one instruction multiplies u8 by s8 and adds into int32;
- ``amx_int8``: Intel's tile multiply (int32 accumulation);
- ``asimddp`` (ARM's ``dotprod``): the ARM int8 dot product;
- ``avx512f``: x86's 512-bit SIMD, where ONNX Runtime's blocked (NCHWc) float Convs take 16 channels a block
  (8 on other x86, none elsewhere): ``CpuFeatures.nchwc_block``, the multiple channel pruning keeps.

Why the weight range follows them: without VNNI, ONNX Runtime's x86 U8S8 kernels add
pairs of u8*s8 products in int16 (``vpmaddubsw``), which saturates when full-range int8
weights meet large activations: a wrong answer, not a rounding error. 7-bit weights
(``reduce_range``, |w| <= 63) cannot saturate. VNNI and AMX accumulate in int32, and ARM
kernels never use the int16 pair sum, so there full 8-bit weights are safe and more
accurate. Unknown hardware gets 7-bit weights: slightly less accurate, never wrong.

The model may run on another machine than the one that optimizes it, so the choice is
printed (``WeightRange.note``) with the flag that overrides it.
"""

from __future__ import annotations

import functools
import platform
import warnings
from dataclasses import dataclass

# Spellings of the features graphopt asks about, as archspec reports them per platform
# (Linux flags; macOS and Windows are converted to the Linux names by archspec).
_FEATURE_NAMES = {
    "avx2": ("avx2",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni", "avxvnni"),
    "amx_int8": ("amx_int8",),
    "arm_dotprod": ("asimddp", "dotprod"),
    "avx512f": ("avx512f",),  # not an int8 feature: left out of ``describe`` (and so of timing caches' keys)
}
_LABELS = {
    "avx2": "AVX2",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
    "arm_dotprod": "ARM dot product",
}
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM = ("aarch64", "arm64")


@dataclass(frozen=True)
class CpuFeatures:
    """What graphopt knows of this CPU: its architecture family and int8 features.

    ``arch`` is ``x86``, ``arm`` or the machine name; ``features`` holds the keys of
    ``_FEATURE_NAMES`` found; ``source`` says how they were found (``archspec``, or why not).
    """

    arch: str
    features: frozenset[str]
    source: str = "archspec"

    @property
    def int32_accumulation(self) -> bool:
        """Whether ONNX Runtime's int8 kernels here sum u8*s8 products without an int16 step."""
        if self.arch == "arm":
            return True
        return self.arch == "x86" and bool(self.features & {"avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def nchwc_block(self) -> int | None:
        """Channels a block of ONNX Runtime's blocked (NCHWc) float Conv layout holds here: 16 where its MLAS
        kernels use AVX-512F, else 8 on x86 (its SSE and AVX2 kernels'); None off x86, where MLAS blocks nothing in
        its default builds (ARM64's NEON NCHWc kernels, block 16, are an opt-in build flag graphopt cannot see).

        MLAS tries AVX-512F only inside its AVX2/FMA branch (``platform.cpp``): AVX-512F without AVX2 (a
        hypervisor's odd CPU model) runs its SSE/AVX kernels, whose block is 8."""
        if self.arch != "x86":
            return None
        return 16 if {"avx2", "avx512f"} <= self.features else 8

    def describe(self) -> str:
        """``x86: AVX2, AVX-512 VNNI`` (the features found, in a fixed order), for reports."""
        found = [label for key, label in _LABELS.items() if key in self.features]
        shown = ", ".join(found) or "no int8 dot-product features found"
        return f"{self.arch}: {shown}" + ("" if self.source == "archspec" else f" ({self.source})")


@dataclass(frozen=True)
class WeightRange:
    """The int8 weight range chosen for a run: ``reduce_range`` (7-bit) or full 8-bit, and the note saying why."""

    reduce_range: bool
    note: str


@functools.lru_cache(maxsize=1)
def detect() -> CpuFeatures:
    """This machine's ``CpuFeatures`` (detected once per process)."""
    arch = _family(platform.machine())
    try:
        from archspec.cpu import detect as archspec_detect
        from archspec.cpu import host
    except ImportError:
        return CpuFeatures(arch, frozenset(), "archspec is not installed")
    with warnings.catch_warnings():
        # archspec warns, then falls back to a generic CPU, when a platform query fails.
        warnings.simplefilter("ignore")
        raw = set(archspec_detect.detected_info().features)
        try:
            raw |= set(host().features)
        except (ValueError, KeyError, AssertionError):  # a CPU archspec's database does not know
            pass
    found = frozenset(key for key, names in _FEATURE_NAMES.items() if raw.intersection(names))
    return CpuFeatures(arch, found)


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's brand string (``Intel(R) Xeon(R) ...``) on every platform, else the machine's name."""
    try:
        from archspec.cpu import brand_string

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            name = brand_string()
    except (ImportError, OSError, ValueError):
        name = None
    return name or platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def microarchitecture() -> str:
    """archspec's name for this CPU's microarchitecture (``zen5``, ``icelake``, or a level such as
    ``x86_64_v4`` for a CPU its database does not know), else ``unknown``."""
    try:
        from archspec.cpu import host
    except ImportError:
        return "unknown"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return host().name
    except (ValueError, KeyError, AssertionError, OSError):
        return "unknown"


def cpu_identity() -> str:
    """What a kernel's speed on this CPU depends on, for timing caches: the brand string, the
    microarchitecture and the int8 features (``AMD EPYC (x86_64_v4; x86: AVX2, AVX-512 VNNI)``).

    A cloud VM's brand string alone can name CPUs of different generations alike (``AMD EPYC``
    for an AVX2-only Zen 2 and an AVX-512 VNNI Zen 5), whose int8 kernels differ several-fold.
    """
    return f"{cpu_name()} ({microarchitecture()}; {detect().describe()})"


def int8_weight_range(full_range_weights: bool | None, features: CpuFeatures | None = None) -> WeightRange:
    """7-bit or 8-bit int8 weights: as asked (True/False), or from the CPU's features when None.

    See the module docstring for why the hardware decides the default.
    """
    if full_range_weights is not None:
        asked = "--full-range-weights" if full_range_weights else "--no-full-range-weights"
        bits = "8-bit" if full_range_weights else "7-bit"
        return WeightRange(not full_range_weights, f"int8 weights {bits} ({asked})")
    features = features or detect()
    found = features.describe()
    if features.int32_accumulation:
        return WeightRange(
            False,
            f"int8 weights 8-bit: this CPU ({found}) sums int8 products in int32, so full-range weights cannot "
            "saturate; for an x86 CPU without VNNI pass --no-full-range-weights",
        )
    return WeightRange(
        True,
        f"int8 weights 7-bit: this CPU ({found}) has no VNNI/AMX, whose int8 kernels saturate on full-range "
        "weights; for a CPU with VNNI/AMX or ARM pass --full-range-weights",
    )


def _family(machine: str) -> str:
    name = machine.lower()
    if name in _X86:
        return "x86"
    if name in _ARM:  # 64-bit ARM; 32-bit ARM builds of ONNX Runtime are not judged here
        return "arm"
    return name or "unknown"
