"""runtime: the fast switch, the cache folder, threads, and atomic folder writes."""
import pytest

from shared_subspace import runtime


def test_atomic_folder_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    folder = tmp_path / "adapter"
    with runtime.atomic_folder(folder) as tmp:
        (tmp / "weights").write_text("v1")
    assert (folder / "weights").read_text() == "v1"

    with pytest.raises(RuntimeError, match="interrupted"):
        with runtime.atomic_folder(folder) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("interrupted")
    assert (folder / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"], "no temporary folder left behind"


def test_switches(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.FAST_ENV, "yes")
    assert runtime.fast_mode()
    monkeypatch.setenv(runtime.FAST_ENV, "0")
    assert not runtime.fast_mode()
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "c"))
    assert runtime.cache_dir("zoo") == tmp_path / "c" / "zoo" and (tmp_path / "c" / "zoo").is_dir()
    with pytest.raises(ValueError, match="at least 1"):
        runtime.set_threads(0)


def test_has_fast_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    from pathlib import Path

    assert runtime.has_fast_bf16("meta") is False
    real = Path.read_text
    for flags, expected in [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 x", True)]:
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: f"flags\t: {flags}\n" if str(self) == "/proc/cpuinfo"
                            else real(self, *a, **k))
        assert runtime.has_fast_bf16("cpu") is expected
