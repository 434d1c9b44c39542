"""The C memory allocator of training processes: glibc's malloc, or tcmalloc / jemalloc preloaded.

A CPU training step allocates and frees thousands of feature maps of a few MB each. glibc's
malloc serves them from fragmented heap bins (its own ``_int_malloc`` and chunk consolidation were
~6% of a supernet step's samples on 2 Intel Xeon cores) or fresh mmaps that fault their pages in
again; tcmalloc keeps freed spans for reuse. Preloaded, it took the optimised MobileNetV2_CNFx3
supernet step (256x192, batch 8, bf16, 2 threads) from 800-1010 ms to 710-920 ms a step (medians),
10-21% faster in each of five alternating pairs of processes.

An allocator can only be chosen when a process starts (``LD_PRELOAD``), so this module finds the
library on the machine and hands it to processes started later: the benchmark's measurement
processes (:func:`preloading`) and, from the shell, ``kedro run`` itself::

    LD_PRELOAD="$(python -m pnfs_pipeline.engine.allocator --ld-preload)" kedro run

(``make run`` does this.)
Processes a run launches (``trainer.nproc_per_node`` workers) inherit it. Nothing here is needed
for correctness: without a library every process keeps glibc's malloc.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Library file names by allocator, most specific first (Debian's libtcmalloc-minimal4 and
# libjemalloc2; gperftools' full tcmalloc; unversioned names as conda installs them).
LIBRARY_NAMES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
AUTO_ORDER = ("tcmalloc", "jemalloc")  # tcmalloc measured faster here; jemalloc as the fallback
INSTALL_HINT = {
    "tcmalloc": "on Debian/Ubuntu: apt-get install libtcmalloc-minimal4 (or `make allocator`)",
    "jemalloc": "on Debian/Ubuntu: apt-get install libjemalloc2",
}


def library_directories() -> list[Path]:
    """Where shared libraries are looked for: the environment's own, then the system's."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    candidates = [Path(sys.prefix) / "lib"]
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        if multiarch:
            candidates.append(Path(root) / multiarch)
        candidates.append(Path(root))
    candidates += [Path("/usr/lib64"), Path("/lib64")]
    return list(dict.fromkeys(candidates))


def find_allocator(name: str, directories: list[Path] | None = None) -> Path | None:
    """The shared library of allocator ``name`` ('tcmalloc' or 'jemalloc'), or None if absent."""
    if name not in LIBRARY_NAMES:
        raise ValueError(f"unknown allocator {name!r}; known: {sorted(LIBRARY_NAMES)}")
    for directory in directories if directories is not None else library_directories():
        for file_name in LIBRARY_NAMES[name]:
            path = directory / file_name
            if path.is_file():
                return path.resolve()
    return None


def resolve_allocator(choice: str, directories: list[Path] | None = None) -> Path | None:
    """The library to preload for ``choice``: 'auto' (tcmalloc, else jemalloc, else None),
    'system' (None: glibc's malloc), an allocator name (an error if it is not installed) or a
    path to a library file."""
    if choice == "system":
        return None
    if choice == "auto":
        for name in AUTO_ORDER:
            found = find_allocator(name, directories)
            if found is not None:
                return found
        return None
    if choice in LIBRARY_NAMES:
        found = find_allocator(choice, directories)
        if found is None:
            raise FileNotFoundError(f"allocator {choice!r} is not installed ({INSTALL_HINT[choice]})")
        return found
    path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(
            f"allocator {choice!r} is neither 'auto', 'system', one of {sorted(LIBRARY_NAMES)} nor a library file"
        )
    return path.resolve()


def allocator_name(library: Path | str) -> str:
    """'tcmalloc' / 'jemalloc' for a library of theirs, else the file's name."""
    file_name = Path(library).name
    for name in LIBRARY_NAMES:
        if file_name.startswith(f"lib{name}"):
            return name
    return file_name


def loaded_allocator(maps: str | None = None) -> str:
    """The allocator this process runs with ('tcmalloc', 'jemalloc' or 'system'), read from its
    memory maps (``/proc/self/maps``, or the ``maps`` text given)."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "system"
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 6:
            name = allocator_name(fields[-1])
            if name in LIBRARY_NAMES:
                return name
    return "system"


def ld_preload_value(library: Path | None, current: str | None) -> str:
    """``LD_PRELOAD`` for allocator ``library`` (``None``: glibc's malloc): ``current`` without
    any allocator library it names, ``library`` first. Other preloaded libraries stay."""
    kept = [entry for entry in (current or "").replace(":", " ").split() if allocator_name(entry) not in LIBRARY_NAMES]
    return " ".join(([str(library)] if library is not None else []) + kept)


@contextmanager
def preloading(library: Path | None) -> Iterator[None]:
    """Processes started inside the block run with allocator ``library`` (``None``: glibc's
    malloc; see :func:`ld_preload_value`); ``LD_PRELOAD`` is restored after the block."""
    previous = os.environ.get("LD_PRELOAD")
    value = ld_preload_value(library, previous)
    if value:
        os.environ["LD_PRELOAD"] = value
    else:
        os.environ.pop("LD_PRELOAD", None)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the allocator library to preload (LD_PRELOAD=\"$(python -m pnfs_pipeline.engine.allocator)\")."
    )
    parser.add_argument(
        "choice", nargs="?", default="auto",
        help="auto (default: tcmalloc, else jemalloc, else nothing), system, tcmalloc, jemalloc or a library path",
    )
    parser.add_argument(
        "--ld-preload", action="store_true",
        help="print the whole LD_PRELOAD value: the library first, then the current LD_PRELOAD's other entries",
    )
    args = parser.parse_args(argv)
    try:
        library = resolve_allocator(args.choice)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)  # noqa: T201 - a command-line answer
        return 1
    answer = ld_preload_value(library, os.environ.get("LD_PRELOAD")) if args.ld_preload else library
    if answer:
        print(answer)  # noqa: T201 - the answer, for LD_PRELOAD
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
