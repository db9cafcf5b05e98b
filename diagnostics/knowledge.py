"""What the checks know about NVIDIA hardware and software, as data with a source for every row.

Architectures (compute capability -> minimum CUDA and driver), CUDA -> minimum driver, known-bad
version combinations, and datasheet peaks per GPU model (`peak_for`, used by the benchmark's
efficiency figures). Checks look things up here instead of hard-coding versions in `if`s, so a new
GPU generation or a newly found bad combination is one new row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

CUDA_DRIVER_TABLE = "https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html#id5"
CUDA_GPUS = "https://developer.nvidia.com/cuda-gpus"
CUDA_LEGACY_GPUS = "https://developer.nvidia.com/cuda-legacy-gpus"
TF_BUILD_INFO = "tensorflow/python/platform/build_info.py of the official TensorFlow 2.21 wheel"


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """ "570.86.15" -> (570, 86, 15); "12.5.1" -> (12, 5, 1); anything unparsable -> None."""
    if not text:
        return None
    parts = re.findall(r"\d+", text.split("+")[0])
    return tuple(int(p) for p in parts) if parts else None


def version_at_least(have: str | None, need: str) -> bool | None:
    """None when `have` is unknown, so callers can skip rather than guess."""
    have_v, need_v = parse_version(have), parse_version(need)
    if have_v is None or need_v is None:
        return None
    return have_v >= need_v


# -- architectures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    name: str  # its family, then which of its chips in brackets: "Blackwell (data centre)"
    compute_capabilities: tuple[str, ...]
    min_cuda: str  # first CUDA toolkit that can build native code for it
    min_driver_linux: str  # that toolkit's minimum Linux driver
    source: str
    # min_cuda is newer than the CUDA of the official TensorFlow wheels (12.5.1 for 2.21): native
    # kernels for it need a TensorFlow built from source or NVIDIA's container
    needs_source_build: bool = False
    # the troubleshooting guide's section for running TensorFlow on it
    guide_section: str = "driver-and-cuda-versions"

    @property
    def family(self) -> str:
        """ "Blackwell" for "Blackwell (data centre)"."""
        return self.name.partition(" (")[0]

    @property
    def min_driver_major(self) -> str:
        """ "570" for 570.26."""
        return self.min_driver_linux.split(".")[0]


ARCHITECTURES: tuple[Architecture, ...] = (
    # Kepler and Maxwell: CUDA 12 dropped Kepler and the R470 drivers were its last; TensorFlow 2.x
    # wheels have had no kernels for either for years (sm_60 is the lowest TF 2.21 builds for).
    Architecture(
        "Kepler", ("3.0", "3.2", "3.5"), "5.0", "304.54", f"{CUDA_LEGACY_GPUS}; {CUDA_DRIVER_TABLE}"
    ),
    Architecture("Kepler", ("3.7",), "6.5", "340.29", f"{CUDA_LEGACY_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Maxwell", ("5.0",), "6.0", "331.62", f"{CUDA_LEGACY_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Maxwell", ("5.2", "5.3"), "6.5", "340.29", f"{CUDA_LEGACY_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Pascal", ("6.0", "6.1", "6.2"), "8.0", "375.26", f"{CUDA_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Volta", ("7.0", "7.2"), "9.0", "384.81", f"{CUDA_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Turing", ("7.5",), "10.0", "410.48", f"{CUDA_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Ampere", ("8.0",), "11.0", "450.51.06", f"{CUDA_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Ampere", ("8.6", "8.7"), "11.1", "455.23", f"{CUDA_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Ada Lovelace", ("8.9",), "11.8", "520.61.05", f"{CUDA_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture("Hopper", ("9.0",), "11.8", "520.61.05", f"{CUDA_GPUS}; {CUDA_DRIVER_TABLE}"),
    Architecture(
        "Blackwell (data centre)",
        ("10.0", "10.3"),
        "12.8",
        "570.26",
        f"{CUDA_GPUS}; CUDA 12.8 release notes (first toolkit with sm_100); {CUDA_DRIVER_TABLE}; "
        f"{TF_BUILD_INFO} (CUDA 12.5.1)",
        needs_source_build=True,
        guide_section="rtx-5090-and-blackwell",
    ),
    Architecture(
        "Blackwell (GeForce RTX 50 / RTX PRO)",
        ("12.0", "12.1"),
        "12.8",
        "570.26",
        f"{CUDA_GPUS}; CUDA 12.8 release notes (first toolkit with sm_120); {CUDA_DRIVER_TABLE}; "
        f"{TF_BUILD_INFO} (CUDA 12.5.1)",
        needs_source_build=True,
        guide_section="rtx-5090-and-blackwell",
    ),
)


def architecture_for(compute_capability: str | None) -> Architecture | None:
    return next((a for a in ARCHITECTURES if compute_capability in a.compute_capabilities), None)


# -- compute capability from the product name --------------------------------------------------------
# `nvidia-smi -q -x` does not report the compute capability, so a dump's GPUs get it from their
# product name. Each row: a regular expression over the lowercased name (NVIDIA / Tesla / GeForce /
# Quadro prefixes kept), the compute capability, and where it is listed. The first match wins, so
# the more specific rows come first. A name no row matches ("Graphics Device", a future part) gets
# None: the checks that need the compute capability then say they cannot tell.
_MODELS: tuple[tuple[str, str, str], ...] = (
    # Blackwell
    (r"\bgb10\b", "12.1", CUDA_GPUS),
    (r"\b(b300|gb300)\b", "10.3", CUDA_GPUS),
    (r"\b(b100|b200|gb200)\b", "10.0", CUDA_GPUS),
    (r"rtx (pro )?\d{4}\b.*blackwell|rtx 50[5-9]0", "12.0", CUDA_GPUS),
    # Hopper
    (r"\b(h100|h200|h800|h20|gh200)\b", "9.0", CUDA_GPUS),
    # Ada Lovelace
    (r"\b(l4|l40|l40s|l20)\b|rtx 40[5-9]0|rtx \d{4}\b.*\bada\b|rtx 6000 ada", "8.9", CUDA_GPUS),
    # Ampere
    (r"\b(a100|a800|a30)\b", "8.0", CUDA_GPUS),
    (r"\bagx orin\b|\borin\b", "8.7", CUDA_GPUS),
    (r"\b(a40|a16|a10g?|a2|a10m)\b|rtx 30[5-9]0|rtx a\d{3,4}\b|\ba\d{3,4}m?\b.*laptop", "8.6", CUDA_GPUS),
    # Volta
    (r"\bv100|titan v\b|quadro gv100", "7.0", CUDA_GPUS),
    (r"\bxavier\b", "7.2", CUDA_GPUS),
    # Turing
    (r"\bt4\b|rtx 20[6-8]0|titan rtx|gtx 16[5-6]0|quadro rtx|\bt(400|500|550|600|1000|1200)\b", "7.5",
     CUDA_GPUS),
    # Pascal
    (r"\bp100\b|quadro gp100", "6.0", CUDA_GPUS),
    (r"\b(p40|p4|p6)\b|gtx 10[5-8]0|gt 1030|titan xp|titan x \(pascal\)|quadro p\d{3,4}\b", "6.1",
     CUDA_GPUS),
    (r"\bjetson tx2\b", "6.2", CUDA_GPUS),
    # Maxwell
    (r"\bm10\b|gtx 750|quadro k(620|1200|2200)\b|quadro m(500|520|600|1000|1200|2000)m?\b", "5.0",
     CUDA_LEGACY_GPUS),
    (r"\b(m60|m40|m6|m4)\b|gtx 9[5-8]0|gtx titan x\b|quadro m(4000|5000|6000)\b", "5.2", CUDA_LEGACY_GPUS),
    (r"\bjetson nano\b|\btegra x1\b", "5.3", CUDA_LEGACY_GPUS),
    # Kepler
    (r"\bk80\b", "3.7", CUDA_LEGACY_GPUS),
    (r"\b(k40m?|k40c|k20x?m?|k20c|k6000|k5200)\b|gtx titan( black| z)?$|gtx 780", "3.5", CUDA_LEGACY_GPUS),
    (r"\b(k10|grid k520|k4200|k5000)\b|gtx 6[5-9]0|gtx 7[67]0", "3.0", CUDA_LEGACY_GPUS),
)  # fmt: skip


def compute_capability_for_name(name: str | None) -> str | None:
    """The compute capability of a product name as nvidia-smi prints it ("Tesla K80" -> "3.7"), or None."""
    if not name:
        return None
    text = " ".join(name.lower().replace("-", " ").split())
    return next((cc for pattern, cc, _ in _MODELS if re.search(pattern, text)), None)


def lowest_build_capability(build_caps: tuple[str, ...]) -> tuple[int, int] | None:
    """The lowest compute capability a TensorFlow build has code for ("sm_60" -> (6, 0)), or None.

    TensorFlow ignores a GPU below it ("Ignoring visible gpu device ... The minimum required Cuda
    capability is 6.0"), so such a GPU can never be part of a run.
    """
    found = [
        (int(m.group(1)), int(m.group(2)))
        for cap in build_caps
        if (m := re.fullmatch(r"(?:sm|compute)_(\d+)(\d)[a-z]?", cap))
    ]
    return min(found) if found else None


def code_for(compute_capability: str, build_caps: tuple[str, ...]) -> tuple[str, str | None]:
    """How TensorFlow's build can run on a GPU: ("native", "sm_80"), ("ptx", "compute_90") or ("none", None).

    Native code (SASS) for sm_XY runs on GPUs of the same major version X with minor >= Y; PTX for
    compute_XY is JIT-compiled by the driver for any GPU of compute capability >= X.Y. In TensorFlow's
    build settings "compute_XY" means SASS for sm_XY plus PTX, and "sm_XY" SASS alone.
    """
    major, minor = (int(p) for p in compute_capability.split("."))
    natives, ptx = [], []
    for cap in build_caps:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", cap)
        if not m:
            continue
        cap_major, cap_minor = int(m.group(2)), int(m.group(3))
        if cap_major == major and cap_minor <= minor and not cap.endswith("a"):
            natives.append((cap_minor, f"sm_{cap_major}{cap_minor}"))
        if m.group(1) == "compute" and (cap_major, cap_minor) <= (major, minor):
            ptx.append(((cap_major, cap_minor), cap))
    if natives:
        return "native", max(natives)[1]
    if ptx:
        return "ptx", max(ptx)[1]
    return "none", None


# Minimum Linux driver for each CUDA toolkit (GA releases), from NVIDIA's table. The driver's own
# "CUDA Version" (nvidia-smi, NVML) is the highest toolkit it supports.
CUDA_MIN_DRIVER_LINUX: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}
CUDA_MIN_DRIVER_SOURCE = CUDA_DRIVER_TABLE
# CUDA minor-version compatibility: code built with any 12.x toolkit runs on a 12.0+ driver, except
# for PTX, which a driver can only JIT-compile if it is at least as new as the toolkit that wrote it.
MINOR_VERSION_COMPAT_SOURCE = "https://docs.nvidia.com/deploy/cuda-compatibility/#minor-version-compatibility"


def min_driver_for_cuda(cuda: str) -> str | None:
    v = parse_version(cuda)
    return None if v is None else CUDA_MIN_DRIVER_LINUX.get(f"{v[0]}.{v[1] if len(v) > 1 else 0}")


# -- known-bad combinations ----------------------------------------------------------------------


@dataclass(frozen=True)
class KnownBad:
    """A component version that fails on some GPUs. `cc_major` None means on every GPU."""

    component: str  # "nccl", "tensorflow-xla", ...
    versions: tuple[str, ...]
    cc_major: int | None
    problem: str
    fixed_in: str | None
    source: str


KNOWN_BAD: tuple[KnownBad, ...] = (
    KnownBad(
        component="nccl",
        versions=("2.25.1",),
        cc_major=12,
        problem=(
            "NCCL 2.25.1 needs more shared memory per block than compute capability 12.x allows "
            "(ncclMaxSharedMem 82240 exceeds device/fn maxSharedMem 79856): all-reduce fails on "
            "RTX 50-series cards"
        ),
        fixed_in="2.26.2",
        source="https://github.com/NVIDIA/nccl-tests/issues/287; https://github.com/NVIDIA/nccl/issues/1637",
    ),
)


def known_bad(component: str, version: str | None, cc_major: int) -> KnownBad | None:
    if version is None:
        return None
    have = parse_version(version)
    for row in KNOWN_BAD:
        if row.component != component or (row.cc_major is not None and row.cc_major != cc_major):
            continue
        if any(parse_version(v) == have for v in row.versions):
            return row
    return None


# XLA in the official TF 2.21 wheel bundles a ptxas that writes PTX 8.5, which cannot target
# sm_120 ("PTX version 8.5 does not support target 'sm_120'"): XLA_SM120_SOURCE.
XLA_MAX_NATIVE_CC_MAJOR = 9
XLA_SM120_SOURCE = "TensorFlow 2.21 with XLA on an RTX 5090 (ptxas: PTX version 8.5 does not support sm_120)"
XLA_SM120_ISSUE = "https://github.com/tensorflow/tensorflow/issues/111958"


def xla_unavailable(compute_capabilities: Iterable[str | None], build_caps: tuple[str, ...]) -> str | None:
    """Why XLA (`--jit-compile`) cannot run on GPUs of these compute capabilities under a TensorFlow
    built for `build_caps` (TfBuild.compute_capabilities), or None where it can or it cannot be told.

    XLA compiles its own kernels with the ptxas of the build's CUDA; a GPU newer than that CUDA and
    without native kernels in the build gets an LLVM error instead (XLA_SM120_ISSUE).
    """
    if not build_caps:
        return None
    blocked = sorted(
        {
            cc
            for cc in compute_capabilities
            if cc
            and int(cc.split(".")[0]) > XLA_MAX_NATIVE_CC_MAJOR
            and code_for(cc, build_caps)[0] != "native"
        }
    )
    if not blocked:
        return None
    targets = ", ".join(f"sm_{cc.replace('.', '')}" for cc in blocked)
    return (
        f"XLA cannot compile for compute capability {', '.join(blocked)}: this TensorFlow has no {targets} "
        f"kernels (built for {', '.join(build_caps)}) and its bundled ptxas writes PTX 8.5, which cannot "
        f"target {targets} (\"LLVM ERROR: PTX version 8.5 does not support target 'sm_120'\", "
        "tensorflow/tensorflow#111958)"
    )


# -- datasheet peaks per GPU model ----------------------------------------------------------------


@dataclass(frozen=True)
class Peak:
    """Datasheet peaks of one GPU model; what measured throughput is compared against.

    fp16_tensor_tflops is the dense (no sparsity) FP16 Tensor Core rate with FP32 accumulation, which
    is what Keras mixed_float16 uses; GeForce cards run it at half their FP16-accumulate rate.
    Bandwidths are in GB/s (10^9 bytes/s) as NVIDIA quotes them: NVLink and PCIe are the total of
    both directions. `link_gbps` is the GPU-to-GPU path all-reduce uses: NVLink where the model has
    it, else PCIe.
    """

    model: str
    fp32_tflops: float
    fp16_tensor_tflops: float | None
    memory_bandwidth_gbps: float
    nvlink_gbps: float | None
    pcie_gbps: float
    source: str
    link_gbps: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "link_gbps", self.nvlink_gbps or self.pcie_gbps)


_PCIE3, _PCIE4, _PCIE5 = 32.0, 64.0, 128.0  # x16, both directions, as datasheets quote them

# (tokens that must all appear in the normalised NVML name, Peak); the most specific rows first.
_PEAKS: tuple[tuple[tuple[str, ...], Peak], ...] = (
    (("h200",), Peak("H200 SXM", 67.0, 989.0, 4800.0, 900.0, _PCIE5,
                     "https://www.nvidia.com/en-us/data-center/h200/")),
    (("h100", "nvl"), Peak("H100 NVL", 60.0, 835.0, 3900.0, 600.0, _PCIE5,
                           "https://www.nvidia.com/en-us/data-center/h100/")),
    (("h100", "pcie"), Peak("H100 PCIe", 51.0, 756.0, 2000.0, 600.0, _PCIE5,
                            "https://www.nvidia.com/en-us/data-center/h100/")),
    (("h100",), Peak("H100 SXM", 67.0, 989.0, 3350.0, 900.0, _PCIE5,
                     "https://www.nvidia.com/en-us/data-center/h100/")),
    (("a100", "sxm4", "80gb"), Peak("A100 SXM4 80GB", 19.5, 312.0, 2039.0, 600.0, _PCIE4,
                                    "https://www.nvidia.com/en-us/data-center/a100/")),
    (("a100", "sxm4"), Peak("A100 SXM4 40GB", 19.5, 312.0, 1555.0, 600.0, _PCIE4,
                            "https://www.nvidia.com/en-us/data-center/a100/")),
    (("a100", "80gb"), Peak("A100 PCIe 80GB", 19.5, 312.0, 1935.0, 600.0, _PCIE4,
                            "https://www.nvidia.com/en-us/data-center/a100/ (NVLink via bridge)")),
    (("a100",), Peak("A100 PCIe 40GB", 19.5, 312.0, 1555.0, 600.0, _PCIE4,
                     "https://www.nvidia.com/en-us/data-center/a100/ (NVLink via bridge)")),
    (("v100", "sxm2"), Peak("V100 SXM2", 15.7, 125.0, 900.0, 300.0, _PCIE3,
                            "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf")),
    (("v100",), Peak("V100 PCIe", 14.0, 112.0, 900.0, None, _PCIE3,
                     "https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf")),
    (("l40s",), Peak("L40S", 91.6, 362.05, 864.0, None, _PCIE4,
                     "https://www.nvidia.com/en-us/data-center/l40s/")),
    (("l4",), Peak("L4", 30.3, 121.0, 300.0, None, _PCIE4,
                   "https://www.nvidia.com/en-us/data-center/l4/")),
    (("t4",), Peak("T4", 8.1, 65.0, 320.0, None, _PCIE3,
                   "https://www.nvidia.com/en-us/data-center/tesla-t4/")),
    (("rtx", "5090"), Peak("GeForce RTX 5090", 104.8, 209.5, 1792.0, None, _PCIE5,
                           "NVIDIA RTX Blackwell GPU architecture whitepaper, appendix A (FP16 Tensor, "
                           "FP32 accumulate, dense)")),
    (("rtx", "4090"), Peak("GeForce RTX 4090", 82.6, 165.2, 1008.0, None, _PCIE4,
                           "NVIDIA Ada GPU architecture whitepaper, appendix A (FP16 Tensor, FP32 "
                           "accumulate, dense)")),
    (("rtx", "3090"), Peak("GeForce RTX 3090", 35.6, 71.0, 936.0, 112.5, _PCIE4,
                           "NVIDIA Ampere GA102 GPU architecture whitepaper, appendix A (FP16 Tensor, "
                           "FP32 accumulate, dense); NVLink bridge 112.5 GB/s")),
)  # fmt: skip


def _tokens(name: str) -> set[str]:
    return set(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def peak_for(name: str) -> Peak | None:
    """Datasheet peaks for an NVML GPU name ("NVIDIA A100-SXM4-80GB"), or None for an unknown model."""
    tokens = _tokens(name)
    return next((peak for needed, peak in _PEAKS if set(needed) <= tokens), None)


# -- link peaks for an all-reduce's bus bandwidth (gpudiag bandwidth) -----------------------------
# busbw is compared with one direction of the bottleneck link, as nccl-tests' doc/PERFORMANCE.md
# does; GB/s are 10^9 bytes/s. PCIe x16 per direction after line coding, by generation: (GB/s, source).
PCIE_X16_GBPS: dict[int, tuple[float, str]] = {
    3: (15.75, "PCI-SIG PCIe 3.0 base spec: 8 GT/s per lane, 128b/130b"),
    4: (31.5, "PCI-SIG PCIe 4.0 base spec: 16 GT/s per lane, 128b/130b"),
    5: (63.0, "PCI-SIG PCIe 5.0 base spec: 32 GT/s per lane, 128b/130b"),
}
# NVLink per link per direction, by compute capability: (generation, GB/s, source: the datasheet's
# total over both directions / links / 2)
NVLINK_PER_LINK_GBPS: dict[str, tuple[str, float, str]] = {
    "6.0": ("1.0", 20.0, "P100 datasheet: 160 GB/s over 4 links"),
    "7.0": ("2.0", 25.0, "V100 datasheet: 300 GB/s over 6 links"),
    "8.0": ("3.0", 25.0, "A100 datasheet: 600 GB/s over 12 links"),
    "8.6": ("3.0", 14.0625, "A40 datasheet: 112.5 GB/s bridge over 4 links"),
    "9.0": ("4.0", 25.0, "H100 datasheet: 900 GB/s over 18 links"),
    "10.0": ("5.0", 50.0, "B200 datasheet: 1800 GB/s over 18 links; nvidia.com/en-us/data-center/nvlink/"),
}
# a rule of thumb from published nccl-tests runs: large all-reduces reach 70% or more of it
BUSBW_EXPECTED_FRACTION = 0.7
