"""dreamfield.scene.nerfacc_cuda on CPU: the source patch on the installed nerfacc, the cache key and
publish, how the built module reaches nerfacc, and the probe's one-line reasons (no GPU needed)."""

from __future__ import annotations

import difflib
import shutil
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

import dreamfield.scene.nerfacc_cuda as nc

MATH = "include/utils_math.cuh"


@pytest.fixture
def clean_backend(monkeypatch, tmp_path):
    """No nerfacc backend loaded and an empty cache; both restored afterwards."""
    monkeypatch.delitem(sys.modules, nc.BACKEND, raising=False)
    import nerfacc.cuda

    if hasattr(nerfacc.cuda, "_backend"):
        monkeypatch.delattr(nerfacc.cuda, "_backend")
    monkeypatch.setenv("DREAMFIELD_CACHE", str(tmp_path / "cache"))
    yield


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path, clean_backend):
    """Pretend to be a CUDA torch with a CUDA 13.0 toolkit: a stub nvcc and headers in CUDA_HOME."""
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "include").mkdir()
    for header in ("cuda_runtime.h", "cublas_v2.h"):
        (home / "include" / header).write_text("")
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(home))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    return home


def _one_line_reason(reason) -> str:
    assert isinstance(reason, str) and reason, reason
    assert "\n" not in reason and "Traceback" not in reason, reason
    return reason


# --- the patch on the installed nerfacc's sources -------------------------------------------------------


def test_installed_nerfacc_ships_its_cuda_sources():
    csrc = nc.nerfacc_csrc()
    assert {p.name for p in csrc.glob("*.cu")} == {"camera.cu", "grid.cu", "pdf.cu", "scan.cu"}
    assert (csrc / MATH).is_file()


def test_patch_renames_only_the_scalar_lerp(tmp_path):
    src = nc.nerfacc_csrc()
    dst = tmp_path / "src"
    assert nc.patch_sources(src, dst) == [MATH]
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert files == sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for rel in files:
        if str(rel) != MATH:
            assert (src / rel).read_bytes() == (dst / rel).read_bytes(), rel
    old = (src / MATH).read_text().splitlines()
    new = (dst / MATH).read_text().splitlines()
    changed = [line for line in difflib.unified_diff(old, new, lineterm="", n=0) if line[:1] in "+-"]
    assert changed == [
        "--- ",
        "+++ ",
        "-inline __device__ __host__ float lerp(float a, float b, float t)",
        "+inline __device__ __host__ float lerp_unused_scalar(float a, float b, float t)",
    ]


def test_nerfacc_calls_no_lerp():
    """The rename is safe only if nothing calls lerp: it appears in its four definitions alone."""
    csrc = nc.nerfacc_csrc()
    hits = []
    for path in sorted(csrc.rglob("*")):
        if path.suffix in {".cu", ".cpp", ".cuh", ".hpp", ".h"}:
            hits += [(path.name, line.strip()) for line in path.read_text().splitlines() if "lerp(" in line]
    assert len(hits) == 4
    assert all(name == "utils_math.cuh" and line.startswith("inline __device__ __host__ float") for name, line in hits)


def test_patch_fails_loudly_when_the_text_changed(tmp_path):
    src = tmp_path / "csrc"
    shutil.copytree(nc.nerfacc_csrc(), src)
    math = src / MATH
    math.write_text(math.read_text().replace("float lerp(float a,", "float lerp(float x,"))
    with pytest.raises(nc.NerfaccUnavailable, match="cannot patch nerfacc's include/utils_math.cuh") as err:
        nc.patch_sources(src, tmp_path / "dst")
    _one_line_reason(str(err.value))


# --- cache key and publish ------------------------------------------------------------------------------


def test_cache_key_names_every_input():
    base = ("0.5.3", "2.13.0+cu130", "13.0", "9.0", "cpython-311")
    key = nc.cache_key(*base)
    assert "/" not in key and " " not in key and ";" not in key
    for i, other in enumerate(("0.5.2", "2.11.0+cu130", "12.8", "8.0;9.0", "cpython-312")):
        changed = list(base)
        changed[i] = other
        assert nc.cache_key(*changed) != key, other
    assert nc.cache_key(*base) == key


def _fake_build(tmp: Path, calls: list, delay: float = 0.0) -> object:
    calls.append(tmp)
    time.sleep(delay)
    (tmp / nc.SO_NAME).write_bytes(b"not a real extension")
    (tmp / nc.MANIFEST).write_text('{"seconds": 1.5}')
    return types.SimpleNamespace(name="built")


def test_concurrent_publishers_build_once(tmp_path):
    root = tmp_path / "cache"
    (root / "k.tmp-999").mkdir(parents=True)  # left by a build that died
    calls, results = [], []

    def worker():
        results.append(nc.build_or_reuse(root, "k", lambda tmp: _fake_build(tmp, calls, delay=0.3)))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(r[2] for r in results) == [False, True]  # one built, the other found the cache
    assert {r[0] for r in results} == {root / "k" / nc.SO_NAME}
    assert sorted(p.name for p in root.iterdir()) == ["k", "k.lock"]  # no temporary folder left


def test_failed_build_leaves_no_cache(tmp_path):
    root = tmp_path / "cache"

    def failing(tmp: Path):
        (tmp / nc.SO_NAME).write_bytes(b"half")
        raise nc.NerfaccUnavailable("boom")

    with pytest.raises(nc.NerfaccUnavailable, match="boom"):
        nc.build_or_reuse(root, "k", failing)
    assert sorted(p.name for p in root.iterdir()) == ["k.lock"]
    calls = []
    assert nc.build_or_reuse(root, "k", lambda tmp: _fake_build(tmp, calls))[2] is False
    assert len(calls) == 1


# --- ensure: how the module reaches nerfacc -------------------------------------------------------------


def test_built_module_serves_nerfacc_and_cache_is_reused(fake_cuda, monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    import nerfacc.cuda

    seen = {}

    def fake_load(name, sources, build_directory, extra_include_paths, **kwargs):
        seen.update(name=name, sources=[Path(s).name for s in sources], includes=extra_include_paths, **kwargs)
        assert "lerp_unused_scalar" in (Path(build_directory) / "src" / MATH).read_text()
        (Path(build_directory) / nc.SO_NAME).write_bytes(b"fake")
        return types.SimpleNamespace(traverse_grids=lambda *a: ("fake traverse_grids", a))

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    build = nc.ensure_nerfacc_cuda()
    assert build.cached is False and build.path == tmp_path / "cache" / "nerfacc" / build.key / nc.SO_NAME
    assert seen["name"] == "nerfacc_cuda" and seen["extra_cflags"] == ["-O3"] and seen["extra_cuda_cflags"] == ["-O3"]
    assert seen["sources"] == ["camera.cu", "grid.cu", "pdf.cu", "scan.cu", "nerfacc.cpp"] and seen["includes"] == []
    assert "_torch-" + torch.__version__ in build.key and "_cuda-13.0_arch-9.0_" in build.key
    # nerfacc's own lazy CUDA function now reaches the built module
    assert nerfacc.cuda.traverse_grids(1, 2) == ("fake traverse_grids", (1, 2))

    # a new process: the cache is found, so nothing compiles; the (fake) .so cannot be imported
    monkeypatch.delitem(sys.modules, nc.BACKEND)
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: pytest.fail("compiled despite the cache"))
    with pytest.raises(nc.NerfaccUnavailable, match="delete .* to rebuild") as err:
        nc.ensure_nerfacc_cuda()
    _one_line_reason(str(err.value))


def test_ensure_replaces_a_none_backend(fake_cuda, monkeypatch):
    """Without nvcc nerfacc's _backend imports with _C = None; ensure swaps in the built module."""
    from torch.utils import cpp_extension

    upstream = types.ModuleType(nc.BACKEND)
    upstream._C = None
    monkeypatch.setitem(sys.modules, nc.BACKEND, upstream)

    def fake_load(build_directory, **kwargs):
        (Path(build_directory) / nc.SO_NAME).write_bytes(b"fake")
        return types.SimpleNamespace(tag="built")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    nc.ensure_nerfacc_cuda()
    assert sys.modules[nc.BACKEND] is upstream and upstream._C.tag == "built"


# --- the probe's reasons --------------------------------------------------------------------------------


def test_probe_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA is not available" in _one_line_reason(nc.probe_packed(torch.device("cuda")))
    assert "not CUDA" in _one_line_reason(nc.probe_packed("cpu"))


def test_probe_with_a_cpu_torch(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "is a CPU build" in _one_line_reason(nc.probe_packed("cuda"))


def test_probe_without_nvcc(fake_cuda, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CUDA_HOME", str(empty))
    reason = _one_line_reason(nc.probe_packed("cuda"))
    assert reason.startswith("nvcc not found") and str(empty) in reason


def test_probe_with_a_mismatched_toolkit(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert "does not match torch's CUDA 12.8" in _one_line_reason(nc.probe_packed("cuda"))


def test_probe_when_the_compile_fails(fake_cuda, monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    def failing_load(**kwargs):
        raise RuntimeError(
            "Error building extension 'nerfacc_cuda': [1/5] nvcc ...\n"
            "utils_math.cuh(1145): error: 'float lerp(float, float, float)' conflicts\n2 errors detected"
        )

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    reason = _one_line_reason(nc.probe_packed("cuda"))
    assert reason.startswith("compiling nerfacc's CUDA extension failed: utils_math.cuh(1145): error:")
    log = Path(reason.rsplit("(log: ", 1)[1].rstrip(")"))
    assert "2 errors detected" in log.read_text()
    root = tmp_path / "cache" / "nerfacc"
    assert sorted(p.suffix for p in root.iterdir()) == [".lock", ".log"]  # nothing published, no temp folder
    # the next start does not compile again for minutes: it reports the earlier failure at once
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: pytest.fail("compiled again after a failure"))
    again = _one_line_reason(nc.probe_packed("cuda"))
    assert again.startswith("an earlier compile failed (utils_math.cuh(1145): error:") and str(log) in again


def test_probe_when_the_backend_is_none(fake_cuda, monkeypatch):
    monkeypatch.setattr(nc, "ensure_nerfacc_cuda", lambda **kw: None)
    upstream = types.ModuleType(nc.BACKEND)
    upstream._C = None
    monkeypatch.setitem(sys.modules, nc.BACKEND, upstream)
    assert "_C is None" in _one_line_reason(nc.probe_packed("cuda"))


def test_probe_turns_any_failure_into_a_reason(fake_cuda, monkeypatch):
    def broken(**kwargs):
        raise AttributeError("'NoneType' object has no attribute 'traverse_grids'\nmore")

    monkeypatch.setattr(nc, "ensure_nerfacc_cuda", broken)
    assert _one_line_reason(nc.probe_packed("cuda")).startswith("nerfacc's packed path failed: AttributeError:")


# --- the probe's checks, fed CPU-made packed samples ----------------------------------------------------


def _exact_packed(step: float):
    """Uniform samples of each probe ray through the half box x < 0 of [-1, 1]^3, packed, plus per-sample
    weights from a per-ray loop in float64 (T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i)."""
    o, d = nc._probe_rays(64)
    lo, hi = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])
    inv = 1.0 / d
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    near, far = torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)
    rays, starts, ends, weights = [], [], [], []
    for r in range(o.shape[0]):
        if far[r] <= near[r]:
            continue
        edges = torch.cat([torch.arange(float(near[r]), float(far[r]), step), far[r : r + 1]])
        s, e = edges[:-1], edges[1:]
        sigma = nc._probe_sigma(o[r] + d[r] * ((s + e) / 2)[:, None]).double()
        trans = 1.0
        for i in range(s.shape[0]):
            alpha = 1.0 - torch.exp(-sigma[i] * (e[i] - s[i]).double())
            weights.append(trans * alpha)
            trans = trans * (1.0 - alpha)
        rays += [r] * s.shape[0]
        starts.append(s)
        ends.append(e)
    t_s, t_e = torch.cat(starts), torch.cat(ends)
    ray_indices = torch.tensor(rays)
    sigmas = nc._probe_sigma(o[ray_indices] + d[ray_indices] * ((t_s + t_e) / 2)[:, None])
    return o, d, ray_indices, t_s, t_e, sigmas, torch.stack(weights).float()


def test_check_weights_accepts_the_right_weights_and_catches_wrong_ones():
    o, d, rays, t_s, t_e, sigmas, weights = _exact_packed(0.01)
    assert nc.check_weights(weights, t_s, t_e, sigmas, rays, 64) is None
    wrong = weights.clone()
    wrong[len(wrong) // 2] += 1e-2
    assert "differ from the dense ones" in _one_line_reason(nc.check_weights(wrong, t_s, t_e, sigmas, rays, 64))
    nan = weights.clone()
    nan[0] = float("nan")
    assert nc.check_weights(nan, t_s, t_e, sigmas, rays, 64) is not None


def test_check_traversal_accepts_exact_marching_and_catches_wrong_marching():
    step = 0.01
    o, d, rays, t_s, t_e, _, _ = _exact_packed(step)
    assert nc.check_traversal(o, d, rays, t_s, t_e, step) is None
    assert "outside the occupied cells" in _one_line_reason(nc.check_traversal(o, d, rays, t_s + 0.5, t_e + 0.5, step))
    keep = torch.arange(rays.shape[0]) % 7 != 0  # samples lost inside the occupied half
    assert "wrong ray lengths" in _one_line_reason(nc.check_traversal(o, d, rays[keep], t_s[keep], t_e[keep], step))
    empty = torch.zeros(0)
    assert "no samples" in _one_line_reason(nc.check_traversal(o, d, empty.long(), empty, empty, step))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_passes_on_cuda():
    """On a GPU with nvcc: the patched build (or its cache) loads and the packed path matches the dense one."""
    assert nc.probe_packed(torch.device("cuda")) is None
