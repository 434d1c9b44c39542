import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pnfs_pipeline.engine.allocator import (
    allocator_name,
    find_allocator,
    loaded_allocator,
    main,
    preloading,
    resolve_allocator,
)

INSTALLED = resolve_allocator("auto")
needs_allocator = pytest.mark.skipif(INSTALLED is None, reason="neither tcmalloc nor jemalloc is installed here")

CHILD_REPORT = "from pnfs_pipeline.engine.allocator import loaded_allocator; print(loaded_allocator())"


def _child_allocator() -> str:
    done = subprocess.run([sys.executable, "-c", CHILD_REPORT], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_find_allocator_prefers_the_versioned_minimal_tcmalloc(tmp_path):
    empty, libraries = tmp_path / "empty", tmp_path / "lib"
    empty.mkdir()
    libraries.mkdir()
    for name in ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4", "libjemalloc.so.2"):
        (libraries / name).write_bytes(b"")
    assert find_allocator("tcmalloc", [empty, libraries]) == (libraries / "libtcmalloc_minimal.so.4").resolve()
    assert find_allocator("jemalloc", [empty]) is None
    assert resolve_allocator("auto", [libraries]).name == "libtcmalloc_minimal.so.4"
    (libraries / "libtcmalloc_minimal.so.4").unlink()
    (libraries / "libtcmalloc.so.4").unlink()
    assert resolve_allocator("auto", [libraries]).name == "libjemalloc.so.2"
    with pytest.raises(ValueError, match="unknown allocator 'mimalloc'"):
        find_allocator("mimalloc", [libraries])


def test_resolve_allocator_names_what_is_missing(tmp_path):
    assert resolve_allocator("system", [tmp_path]) is None
    assert resolve_allocator("auto", [tmp_path]) is None
    with pytest.raises(FileNotFoundError, match="'tcmalloc' is not installed .*apt-get install libtcmalloc-minimal4"):
        resolve_allocator("tcmalloc", [tmp_path])
    with pytest.raises(FileNotFoundError, match="neither 'auto', 'system'"):
        resolve_allocator(str(tmp_path / "libmissing.so"), [tmp_path])
    library = tmp_path / "libcustom.so"
    library.write_bytes(b"")
    assert resolve_allocator(str(library), [tmp_path]) == library.resolve()
    assert allocator_name(library) == "libcustom.so"
    assert allocator_name("/usr/lib/libjemalloc.so.2") == "jemalloc"


def test_command_line_prints_the_library_or_fails_with_the_reason(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("pnfs_pipeline.engine.allocator.library_directories", lambda: [tmp_path])
    assert main(["auto"]) == 0
    assert capsys.readouterr().out == ""  # nothing found: an empty LD_PRELOAD, glibc's malloc
    assert main(["jemalloc"]) == 1
    assert "'jemalloc' is not installed" in capsys.readouterr().err
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    assert main([]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "libjemalloc.so.2").resolve())


def test_command_line_composes_ld_preload_with_the_other_preloaded_libraries(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("pnfs_pipeline.engine.allocator.library_directories", lambda: [tmp_path])
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    monkeypatch.setenv("LD_PRELOAD", "/x/libjemalloc.so.2:/y/libhook.so")
    assert main(["--ld-preload"]) == 0
    assert capsys.readouterr().out.strip() == f"{(tmp_path / 'libtcmalloc_minimal.so.4').resolve()} /y/libhook.so"
    assert main(["system", "--ld-preload"]) == 0
    assert capsys.readouterr().out.strip() == "/y/libhook.so"


def test_loaded_allocator_reads_the_memory_maps():
    maps = (
        "7f00-7f01 r-xp 00000000 fd:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f02-7f03 rw-p 00000000 00:00 0\n"
    )
    assert loaded_allocator(maps) == "system"
    assert loaded_allocator(maps + "7f04-7f05 r-xp 0 fd:01 9 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n") == "tcmalloc"
    assert loaded_allocator(maps + "7f04-7f05 r-xp 0 fd:01 9 /opt/lib/libjemalloc.so.2\n") == "jemalloc"


def test_preloading_swaps_only_the_allocator_and_restores_the_variable(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/x/libjemalloc.so.2 /y/libprofiler_hook.so")
    with preloading(Path("/z/libtcmalloc_minimal.so.4")):
        assert os.environ["LD_PRELOAD"] == "/z/libtcmalloc_minimal.so.4 /y/libprofiler_hook.so"
    with preloading(None):
        assert os.environ["LD_PRELOAD"] == "/y/libprofiler_hook.so"
    assert os.environ["LD_PRELOAD"] == "/x/libjemalloc.so.2 /y/libprofiler_hook.so"
    monkeypatch.setenv("LD_PRELOAD", "/x/libjemalloc.so.2")
    with preloading(None):
        assert "LD_PRELOAD" not in os.environ
    assert os.environ["LD_PRELOAD"] == "/x/libjemalloc.so.2"


def test_children_started_without_a_library_keep_glibc_malloc():
    with preloading(None):
        assert _child_allocator() == "system"


@needs_allocator
def test_children_started_inside_preloading_run_with_the_library():
    with preloading(INSTALLED):
        assert _child_allocator() == allocator_name(INSTALLED)


def test_benchmark_rows_check_the_allocator_their_processes_ran_with():
    from pnfs_pipeline.benchmarks import _check_allocator

    assert _check_allocator([{"allocator": "system"}], None) == "system"
    with pytest.raises(RuntimeError, match="ran with allocator \\['system'\\], not 'tcmalloc': LD_PRELOAD of"):
        _check_allocator([{"allocator": "system"}], Path("/usr/lib/libtcmalloc_minimal.so.4"))


@needs_allocator
def test_benchmark_training_row_runs_with_the_preloaded_allocator():
    from pnfs_pipeline.benchmarks import (
        DISTRIBUTED_MODE,
        measure_distributed_training,
        measure_training,
    )

    row = measure_training("mobilenet_v2_CNFx3", (32, 32), 2, 1, torch.device("cpu"), DISTRIBUTED_MODE, 1, INSTALLED)
    assert row["allocator"] == allocator_name(INSTALLED) and row["images_per_second"] > 0
    row = measure_distributed_training("mobilenet_v2_CNFx3", (32, 32), 4, 1, DISTRIBUTED_MODE, 2, 1, INSTALLED)
    assert row["allocator"] == allocator_name(INSTALLED) and row["images_per_second"] > 0
    # Without a preload a row reads "system": tests/nas/test_fast_kernels.py (peak memory).
