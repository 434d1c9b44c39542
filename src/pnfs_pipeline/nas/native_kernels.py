"""The project's CPU training kernels: C with OpenMP in ``csrc/``, built once per machine.

PyTorch's eager CPU kernels run one operation per pass over memory; a few places in the supernet's
training step do better as one pass that PyTorch cannot fuse on the CPU (BatchNorm with its
activation, a weighted sum's backward, depthwise-convolution gradients: both from one pass at
stride 1, and at the strides and dilations oneDNN handles slowly). They are written in C and
compiled with the system's C compiler (``$CC``, else ``cc``/``gcc``/``clang``; ``-O3 -march=native
-fopenmp``, 512-bit vectors preferred on x86) into ``$PNFS_KERNEL_CACHE`` (default
``~/.cache/pnfs_pipeline/kernels``), one library per source, compiler and CPU, and loaded with
ctypes. OpenMP links to the runtime PyTorch already loaded, so the kernels share its threads.

Without a compiler, or where the build fails, every caller runs PyTorch's own kernels and a
warning says why; ``PNFS_NATIVE_KERNELS=0`` turns them off. Library code asks
:func:`load_kernels` and falls back when it returns ``None``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")
if platform.machine().lower() in ("x86_64", "amd64"):
    # gcc and clang vectorise for AVX-512 CPUs with 256-bit registers unless told otherwise; the
    # kernels stream whole maps, and 512-bit vectors made the MobileNetV2_CNFx3 training step
    # (256x192, batch 8, bf16, 2 threads, Intel Xeon) 2-12% faster in three alternating pairs of
    # processes (761 -> 749, 802 -> 701, 692 -> 675 ms). CPUs without AVX-512 ignore the preference.
    FLAGS += ("-mprefer-vector-width=512",)

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "library": None, "error": None}


def kernel_cache_dir() -> Path:
    if os.environ.get("PNFS_KERNEL_CACHE"):
        return Path(os.environ["PNFS_KERNEL_CACHE"])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "pnfs_pipeline" / "kernels"


def _compiler() -> list[str] | None:
    """The compiler's command: ``$CC`` split as a shell would (``ccache gcc``), else the first
    of cc, gcc and clang found."""
    if os.environ.get("CC"):
        try:
            return shlex.split(os.environ["CC"])
        except ValueError as error:  # unbalanced quotes
            raise RuntimeError(f"CC={os.environ['CC']!r} is not a command: {error}") from error
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def _machine_key() -> str:
    """What ``-march=native`` depends on: a cache shared by different CPUs keeps one build each."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                cpu += line
                if line.startswith("flags"):
                    break
    except OSError:
        pass
    return cpu


def _sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c"))


def _build(compiler: list[str]) -> Path:
    sources = _sources()
    source = b"".join(p.name.encode() + p.read_bytes() for p in sorted(SOURCE_DIR.iterdir()) if p.suffix in (".c", ".h"))
    shown = shlex.join(compiler)
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"C compiler {shown!r} did not run: {error}") from error
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + version.encode() + _machine_key().encode())
    cache = kernel_cache_dir()
    target = cache / f"pnfs_kernels-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: workers of one job may build at the same time.
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(handle)
    try:
        try:
            result = subprocess.run(
                [*compiler, *FLAGS, *map(str, sources), "-o", temporary, "-lm"], capture_output=True, text=True, timeout=300
            )
        except (OSError, subprocess.SubprocessError) as error:  # a timeout included
            raise RuntimeError(f"{shown} did not build {SOURCE_DIR}: {error}") from error
        if result.returncode != 0:
            raise RuntimeError(f"{shown} failed on {SOURCE_DIR}: {result.stderr.strip()[-2000:]}")
        # mkstemp made it private (0600); a cache shared by users (PNFS_KERNEL_CACHE) needs it readable.
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    logger.info("Built the CPU training kernels: %s", target)
    return target


_P, _I64, _F64, _F32, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_float, ctypes.c_int
# Every exported function, per dtype suffix: its argument types (all return an int status, 0 = done).
SIGNATURES = {
    "pnfs_bn_act_forward": [_P, _I64, _I64, _P, _P, _F64, _P, _P, _F64, _INT, _INT, _P, _P, _P],
    "pnfs_bn_act_backward": [_P, _P, _I64, _I64, _P, _P, _P, _P, _INT, _INT, _P, _P, _P],
    "pnfs_depthwise_weight_grad": [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _INT, _INT, _INT, _INT, _INT, _P],
    "pnfs_depthwise_input_grad": [_P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _INT, _INT, _INT, _INT, _INT, _P],
    "pnfs_depthwise_backward": [_P, _P, _P, _I64, _I64, _I64, _I64, _INT, _INT, _INT, _P, _P],
    "pnfs_scale_and_dot": [_P, _P, _I64, _F32, _INT, _P, _P],
    "pnfs_weighted_sum": [_P, _P, _INT, _I64, _INT, _INT, _P],
}
DTYPE_SUFFIXES = {torch.bfloat16: "bf16", torch.float32: "f32"}


_functions: dict[tuple[str, torch.dtype], ctypes._CFuncPtr] = {}


def _declare(library: ctypes.CDLL) -> None:
    for name, argtypes in SIGNATURES.items():
        for dtype, suffix in DTYPE_SUFFIXES.items():
            function = getattr(library, f"{name}_{suffix}")
            function.argtypes = argtypes
            function.restype = ctypes.c_int
            _functions[(name, dtype)] = function


def kernel(name: str, dtype: torch.dtype) -> ctypes._CFuncPtr:
    """The declared function ``name`` for maps of ``dtype`` (after :func:`load_kernels` succeeded)."""
    try:
        return _functions[(name, dtype)]
    except KeyError:
        raise RuntimeError(f"no C kernel {name} for {dtype}: {unavailable_reason() or 'kernels not loaded'}") from None


def load_kernels() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; ``None`` where it is unavailable
    (the reason is in :func:`unavailable_reason`)."""
    if _state["loaded"]:  # every call after the first: no lock
        return _state["library"]  # type: ignore[return-value]
    with _lock:
        if _state["loaded"]:
            return _state["library"]  # type: ignore[return-value]
        try:
            if os.environ.get("PNFS_NATIVE_KERNELS", "1") == "0":
                raise RuntimeError("turned off by PNFS_NATIVE_KERNELS=0")
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C compiler found (set CC)")
            library = ctypes.CDLL(str(_build(compiler)))
            _declare(library)
            _state["library"] = library
        except (OSError, RuntimeError, AttributeError) as error:
            _state["error"] = str(error)
            logger.warning("CPU training kernels unavailable, using PyTorch's own: %s", error)
        finally:
            # Last: the lock-free check above must not see "loaded" while the build runs.
            _state["loaded"] = True
        return _state["library"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    return _state["error"]  # type: ignore[return-value]
