"""nerfacc's CUDA extension, built so that it compiles on current torch, and a probe of the packed path.

Why: nerfacc 0.5.3 JIT-compiles its kernels on first use (``nerfacc.cuda._backend`` calls
``torch.utils.cpp_extension.load``). torch >= 2.10 compiles extensions with ``-std=c++20``, where
libstdc++'s <math.h> puts ``std::lerp(float, float, float)`` into the global namespace, and nerfacc's
``csrc/include/utils_math.cuh`` defines a global ``float lerp(float, float, float)`` of its own: the
build stops at "conflicts with a previous declaration". nerfacc never calls that scalar ``lerp``, so
renaming it in a copy of the sources is enough (``PATCHES``).

What this module does (``ensure_nerfacc_cuda``):

1. copy the installed nerfacc's ``cuda/csrc`` into a build folder and apply ``PATCHES`` (exact text
   substitutions that fail loudly if nerfacc's text changed);
2. compile it with ``torch.utils.cpp_extension.load`` (ninja) into a cache folder keyed by
   (nerfacc, torch, CUDA toolkit, arch list, Python ABI, patch set): ``$DREAMFIELD_CACHE/nerfacc/<key>/``
   or ``~/.cache/dreamfield/nerfacc/<key>/``. A build runs under an exclusive lock file and is
   published by renaming its finished folder, so concurrent processes neither build twice nor see a
   half-written cache;
3. install the module where nerfacc looks for it: every nerfacc CUDA call runs
   ``from nerfacc.cuda._backend import _C`` (``nerfacc/cuda/__init__.py``), so a module object in
   ``sys.modules["nerfacc.cuda._backend"]`` whose ``_C`` is the built extension serves every packed
   function, and nerfacc's own JIT build is never started.

``probe_packed(device)`` runs that, then a tiny ``OccGridEstimator.sampling`` and a packed
``render_weight_from_density`` on the device, checked against the dense computation, and returns
None when the packed path works or a one-line reason when it does not; it never raises.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dreamfield.files import write_text

Tensor = torch.Tensor

__all__ = [
    "NerfaccUnavailable",
    "NerfaccBuild",
    "PATCHES",
    "ensure_nerfacc_cuda",
    "probe_packed",
    "patch_sources",
    "cache_key",
    "cache_root",
    "nerfacc_csrc",
    "build_or_reuse",
    "check_traversal",
    "check_weights",
]

EXT_NAME = "nerfacc_cuda"  # TORCH_EXTENSION_NAME: the .so exports PyInit_nerfacc_cuda
BACKEND = "nerfacc.cuda._backend"  # the module nerfacc's lazy CUDA functions import _C from
SO_NAME = EXT_NAME + ".so"
MANIFEST = "build.json"

# (file under csrc/, exact old text, new text). The old text must occur exactly once.
PATCHES: tuple[tuple[str, str, str], ...] = (
    (
        "include/utils_math.cuh",
        "inline __device__ __host__ float lerp(float a, float b, float t)\n",
        # C++20's std::lerp(float, float, float) is visible globally via <math.h>; nothing calls this one.
        "inline __device__ __host__ float lerp_unused_scalar(float a, float b, float t)\n",
    ),
)


class NerfaccUnavailable(RuntimeError):
    """nerfacc's CUDA extension cannot be built or loaded here; the message is one line."""


@dataclass(frozen=True)
class NerfaccBuild:
    """Where the extension nerfacc now uses lives. ``seconds``: this call's compile time (0 on a cache hit)."""

    path: Path | None  # the .so (None when nerfacc's own backend was already loaded)
    key: str
    cached: bool
    seconds: float


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def nerfacc_csrc() -> Path:
    """The installed nerfacc's CUDA sources (``nerfacc/cuda/csrc``), found without importing its backend."""
    spec = importlib.util.find_spec("nerfacc")
    if spec is None or spec.origin is None:
        raise NerfaccUnavailable("nerfacc is not installed (pip install nerfacc==0.5.3)")
    csrc = Path(spec.origin).parent / "cuda" / "csrc"
    if not (csrc / "nerfacc.cpp").is_file():
        raise NerfaccUnavailable(f"nerfacc's CUDA sources are missing: no {csrc / 'nerfacc.cpp'}")
    return csrc


def patch_sources(src: Path, dst: Path) -> list[str]:
    """Copy the csrc tree ``src`` to ``dst`` (which must not exist) and apply ``PATCHES`` to the copy.

    Returns the patched files (relative paths). Raises NerfaccUnavailable if an expected text is missing.
    """
    shutil.copytree(src, dst)
    patched = []
    for rel, old, new in PATCHES:
        path = dst / rel
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if text.count(old) != 1:
            raise NerfaccUnavailable(
                f"cannot patch nerfacc's {rel}: expected exactly one {old.strip()!r}, found {text.count(old)}"
            )
        path.write_text(text.replace(old, new), encoding="utf-8")
        patched.append(rel)
    return patched


def cache_root() -> Path:
    """``$DREAMFIELD_CACHE/nerfacc`` if set, else ``~/.cache/dreamfield/nerfacc``."""
    base = os.environ.get("DREAMFIELD_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "dreamfield") / "nerfacc"


def cache_key(nerfacc_version: str, torch_version: str, cuda_version: str, arch_list: str, python_tag: str) -> str:
    """A folder name naming every input that changes the binary, plus a digest of ``PATCHES``."""
    digest = hashlib.sha256(repr(PATCHES).encode()).hexdigest()[:8]
    arch = re.sub(r"[;, ]+", "-", arch_list.strip())
    raw = f"nerfacc-{nerfacc_version}_torch-{torch_version}_cuda-{cuda_version}_arch-{arch}_{python_tag}_p{digest}"
    return re.sub(r"[^A-Za-z0-9._+-]", "-", raw)


def _cuda_home() -> Path:
    """The CUDA toolkit torch's build will use: $CUDA_HOME / $CUDA_PATH, else torch's own guess."""
    from torch.utils import cpp_extension

    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or cpp_extension.CUDA_HOME
    if not home:
        raise NerfaccUnavailable("no CUDA toolkit found (nvcc); install one matching torch's CUDA or set CUDA_HOME")
    home_path = Path(home)
    if not os.access(home_path / "bin" / "nvcc", os.X_OK):
        raise NerfaccUnavailable(f"nvcc not found: CUDA_HOME={home_path} has no bin/nvcc; set CUDA_HOME to a toolkit")
    if not (home_path / "include" / "cuda_runtime.h").is_file():
        raise NerfaccUnavailable(f"CUDA_HOME={home_path} has no include/cuda_runtime.h; set CUDA_HOME to a toolkit")
    return home_path


def _nvcc_version(home: Path) -> str:
    """'13.0' from ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88")."""
    try:
        out = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        raise NerfaccUnavailable(f"running {home / 'bin' / 'nvcc'} --version failed: {_one_line(e)}") from None
    found = re.search(r"release (\d+\.\d+)", out.stdout)
    if found is None:
        raise NerfaccUnavailable(f"cannot read the CUDA version from {home / 'bin' / 'nvcc'} --version")
    return found.group(1)


def _arch_list(device: torch.device | None) -> str:
    """$TORCH_CUDA_ARCH_LIST, else the compute capability of ``device`` (e.g. '9.0' on an H100/H200)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if device is None or not torch.cuda.is_available():
        raise NerfaccUnavailable("TORCH_CUDA_ARCH_LIST is unset and no CUDA device is visible to choose an arch")
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def _extra_includes(home: Path, build_dir: Path) -> list[str]:
    """Headers torch's CUDA code includes but a minimal toolkit lacks (cuBLAS, cuSPARSE, ...).

    pip's CUDA torch ships them in ``site-packages/nvidia/cu<major>/include`` (or ``nvidia/<lib>/include``).
    Only the entries the toolkit lacks are linked into ``build_dir/include_extra``, so nvcc's own
    runtime headers are never shadowed by another release's.
    """
    if (home / "include" / "cublas_v2.h").is_file():
        return []
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    candidates = [p for r in roots for p in sorted(Path(r).glob("*/include")) if (p / "cublas_v2.h").is_file()]
    if not candidates:
        return []
    extra = build_dir / "include_extra"
    extra.mkdir()
    for inc in candidates:
        for entry in inc.iterdir():
            if not (home / "include" / entry.name).exists() and not (extra / entry.name).exists():
                (extra / entry.name).symlink_to(entry)
    return [str(extra)]


def _installed_backend() -> object | None:
    """nerfacc's backend module (``_C``) if one is already loaded in this process, else None."""
    backend = sys.modules.get(BACKEND)
    return getattr(backend, "_C", None) if backend is not None else None


def _install_backend(module: object) -> None:
    """Make ``module`` the extension nerfacc's CUDA functions call (``nerfacc.cuda._backend._C``).

    If nerfacc's _backend was imported already (it sets _C = None without nvcc), its _C is replaced;
    otherwise a module holding _C is placed in sys.modules, so importing _backend never starts
    nerfacc's own JIT build (which fails under C++20).
    """
    import nerfacc.cuda

    backend = sys.modules.get(BACKEND)
    if backend is None:
        backend = types.ModuleType(BACKEND, "nerfacc's CUDA backend, built by dreamfield.scene.nerfacc_cuda")
        sys.modules[BACKEND] = backend
        nerfacc.cuda._backend = backend
    backend._C = module


def _import_so(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(EXT_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_error(message: str) -> str:
    """The first compiler 'error' line of a failed build's output, else its first line."""
    lines = [line for line in str(message).splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\berror\b", line, re.IGNORECASE) and "Error building extension" not in line:
            return _one_line(line, 240)
    return _one_line(lines[0] if lines else message, 240)


def build_or_reuse(root: Path, key: str, build: Callable[[Path], object]) -> tuple[Path, object | None, bool]:
    """The cached ``root/key/nerfacc_cuda.so``, building it first if absent.

    ``build(tmp_dir)`` must leave ``tmp_dir/nerfacc_cuda.so`` and may return the loaded module. It runs
    under an exclusive lock on ``root/key.lock`` (a second process waits, then finds the cache);
    the finished folder is renamed to ``root/key`` in one step, so readers see all of it or nothing.
    Returns (path of the .so, module from ``build`` or None on a cache hit, whether it was a hit).
    """
    final = root / key
    so = final / SO_NAME

    def ready() -> bool:
        return so.is_file() and (final / MANIFEST).is_file()

    if ready():
        return so, None, True
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "a+") as lock:
        _lock(lock)
        if ready():  # another process published it while this one waited
            return so, None, True
        for stale in root.glob(f"{key}.tmp-*"):  # left by a build that died; the lock says none is running
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f"{key}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            module = build(tmp)
            if not (tmp / SO_NAME).is_file():
                raise NerfaccUnavailable(f"the build left no {SO_NAME} in {tmp}")
            if final.exists():  # an incomplete folder (no manifest): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return so, module, False


def _lock(handle) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps the cache whole
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def _compile(tmp: Path, home: Path, arch: str, verbose: bool, manifest: dict) -> object:
    """Patch a copy of nerfacc's sources into ``tmp/src`` and compile them into ``tmp`` (nerfacc's flags: -O3)."""
    from torch.utils import cpp_extension

    src = tmp / "src"
    manifest["patched"] = patch_sources(nerfacc_csrc(), src)
    sources = sorted(str(p) for p in src.glob("*.cu")) + sorted(str(p) for p in src.glob("*.cpp"))
    includes = _extra_includes(home, tmp)
    start = time.perf_counter()
    old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # torch reads the arch list from the environment
    try:
        module = cpp_extension.load(
            name=EXT_NAME,
            sources=sources,
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],
            extra_include_paths=includes,
            build_directory=str(tmp),
            verbose=verbose,
        )
    finally:
        if old_arch is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    for obj in [*tmp.glob("*.o"), tmp / ".ninja_deps"]:  # only the .so is loaded later
        obj.unlink(missing_ok=True)
    write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return module


def _ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; pip's ninja lives beside the venv's python, off PATH unless activated."""
    from torch.utils import cpp_extension

    if cpp_extension.is_ninja_available():
        return
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    if not cpp_extension.is_ninja_available():
        raise NerfaccUnavailable("ninja is not installed (pip install ninja)")


def ensure_nerfacc_cuda(verbose: bool = False, device: torch.device | None = None) -> NerfaccBuild:
    """Build (first run, minutes) or load (cached) nerfacc's CUDA extension and install it for nerfacc.

    ``device`` chooses the arch when $TORCH_CUDA_ARCH_LIST is unset. ``verbose`` shows the compiler
    commands; a one-line notice on stderr announces a compile either way. Raises NerfaccUnavailable.
    """
    import nerfacc

    if _installed_backend() is not None:  # nerfacc's own build, or an earlier call, already loaded one
        return NerfaccBuild(None, "", True, 0.0)
    if importlib.util.find_spec("nerfacc.csrc") is not None:  # a prebuilt nerfacc wheel
        from nerfacc import csrc

        _install_backend(csrc)
        return NerfaccBuild(Path(csrc.__file__), "prebuilt", True, 0.0)
    if torch.version.cuda is None:
        raise NerfaccUnavailable(f"torch {torch.__version__} is a CPU build")
    home = _cuda_home()
    cuda = _nvcc_version(home)
    if cuda.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise NerfaccUnavailable(f"nvcc {cuda} at {home} does not match torch's CUDA {torch.version.cuda}")
    _ninja_on_path()
    arch = _arch_list(device)
    key = cache_key(nerfacc.__version__, torch.__version__, cuda, arch, sys.implementation.cache_tag or "py")
    root = cache_root()
    manifest = {"key": key, "nerfacc": nerfacc.__version__, "torch": torch.__version__, "cuda": cuda, "arch": arch}

    log = root / f"{key}.failed.log"
    if log.is_file():  # a compile takes minutes: do not repeat a failed one at every start
        first = log.read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        raise NerfaccUnavailable(f"an earlier compile failed ({first}); delete {log} to retry")

    def build(tmp: Path) -> object:
        print(f"dreamfield: compiling nerfacc's CUDA extension (first run, a few minutes) into {root / key}",
              file=sys.stderr, flush=True)
        try:
            return _compile(tmp, home, arch, verbose, manifest)
        except NerfaccUnavailable:
            raise
        except Exception as e:
            write_text(log, f"{_first_error(e)}\n{type(e).__name__}: {e}\n")
            raise NerfaccUnavailable(f"compiling nerfacc's CUDA extension failed: {_first_error(e)} (log: {log})")

    so, module, cached = build_or_reuse(root, key, build)
    if module is None:
        try:
            module = _import_so(so)
        except Exception as e:
            raise NerfaccUnavailable(f"loading {so} failed ({_one_line(e, 200)}); delete {so.parent} to rebuild")
    _install_backend(module)
    seconds = 0.0 if cached else float(json.loads((so.parent / MANIFEST).read_text())["seconds"])
    return NerfaccBuild(so, key, cached, seconds)


# ---------------------------------------------------------------------------------------------------------
# The probe: does the packed occupancy-grid path work on this device?


def _probe_rays(n: int) -> tuple[Tensor, Tensor]:
    """n rays (CPU, float32) from a sphere of radius 3 towards points near the origin: (n, 3) origins, unit dirs."""
    g = torch.Generator().manual_seed(0)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    target = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    return o, torch.nn.functional.normalize(target - o, dim=-1)


def _probe_sigma(x: Tensor) -> Tensor:
    """A smooth blob, (M, 3) -> (M,); at most about 5 optical depth along a ray, so nothing is culled."""
    return 4.0 * torch.exp(-(x * x).sum(-1) / 0.5)


def _slab(o: Tensor, d: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Length of each ray's (n, 3) segment inside the box [lo, hi] (slab test; Kay & Kajiya 1986), (n,)."""
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return (far - near).clamp(min=0.0)


def check_traversal(
    o: Tensor, d: Tensor, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, step: float
) -> str | None:
    """Packed samples of a grid whose occupied cells are x < 0 of the box [-1, 1]^3 (n rays, M samples).

    Every sample's midpoint must lie in the occupied half, and each ray's summed interval length
    must equal the length of the ray inside that half up to two steps. None when both hold.
    """
    if t_starts.shape[0] == 0:
        return "the occupancy-grid marching returned no samples"
    rays = ray_indices.long()  # nerfacc returns int32 indices
    t_mid = (t_starts + t_ends) / 2.0
    x = o[rays] + d[rays] * t_mid[:, None]  # (M, 3)
    if not bool(torch.isfinite(x).all()) or float(x[:, 0].max()) > 1e-3 or float(x.abs().max()) > 1.0 + 1e-3:
        return "the occupancy-grid marching placed samples outside the occupied cells"
    length = torch.zeros(o.shape[0], dtype=torch.float64).index_add_(0, rays, (t_ends - t_starts).double())
    lo, hi = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([0.0, 1.0, 1.0])
    expected = _slab(o.double(), d.double(), lo.double(), hi.double())
    err = float((length - expected).abs().max())
    if err > 2.0 * step:
        return f"the occupancy-grid marching covered the wrong ray lengths (off by {err:.3g}, step {step})"
    return None


def check_weights(
    weights: Tensor, t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> str | None:
    """Packed weights (M,) against nerfacc's dense render_weight_from_density on the same samples.

    The packed samples (contiguous per ray) are scattered into (n_rays, S) rows padded with zero
    density, which adds no weight; w_i = T_i (1 - exp(-sigma_i delta_i)) (Max 1995). None when they agree.
    """
    import nerfacc

    rays = ray_indices.long()
    m = rays.shape[0]
    first = torch.full((n_rays,), m, dtype=torch.long).scatter_reduce(0, rays, torch.arange(m), "amin")
    pos = torch.arange(m) - first[rays]  # (M,) index of each sample within its ray
    s = int(pos.max()) + 1 if m else 1
    rows = [torch.zeros(n_rays, s, dtype=torch.float64) for _ in range(3)]
    for row, val in zip(rows, (t_starts, t_ends, sigmas)):
        row[rays, pos] = val.double()
    dense, _, _ = nerfacc.render_weight_from_density(rows[0], rows[1], rows[2])
    err = float((dense[rays, pos] - weights.double()).abs().max()) if m else 0.0
    if not err <= 1e-4:  # also catches NaN
        return f"nerfacc's packed weights differ from the dense ones by {err:.3g}"
    return None


def _run_packed(device: torch.device) -> str | None:
    """Occupancy-grid sampling and packed weights on ``device`` for a blob in the x < 0 half of [-1, 1]^3."""
    from nerfacc import OccGridEstimator, render_weight_from_density

    n, step, res = 64, 0.01, 16
    est = OccGridEstimator(roi_aabb=[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=res, levels=1).to(device)
    est.binaries.zero_()
    est.binaries[0, : res // 2] = True  # cells with x < 0 (binaries are (levels, x, y, z))
    o_cpu, d_cpu = _probe_rays(n)
    o, d = o_cpu.to(device), d_cpu.to(device)

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        return _probe_sigma(o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) / 2.0)[:, None])

    ray_indices, t_starts, t_ends = est.sampling(
        o, d, sigma_fn=sigma_fn, render_step_size=step, early_stop_eps=1e-4, alpha_thre=0.0, stratified=False
    )
    sigmas = sigma_fn(t_starts, t_ends, ray_indices)
    weights, _, _ = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n)
    torch.cuda.synchronize(device)
    got = [t.detach().cpu() for t in (ray_indices, t_starts, t_ends, sigmas, weights)]
    reason = check_traversal(o_cpu, d_cpu, got[0], got[1], got[2], step)
    return reason or check_weights(got[4], got[1], got[2], got[3], got[0], n)


def probe_packed(device: torch.device | str, verbose: bool = False) -> str | None:
    """None when nerfacc's packed occupancy-grid path works on ``device``, else a one-line reason.

    Builds or loads the extension (``ensure_nerfacc_cuda``; the first run compiles for minutes), then
    runs ``_run_packed``. Never raises: every failure becomes the reason.
    """
    try:
        device = torch.device(device)
        if device.type != "cuda":
            return f"the device is {device.type}, not CUDA"
        if not torch.cuda.is_available():
            return "CUDA is not available to torch"
        ensure_nerfacc_cuda(verbose=verbose, device=device)
        if _installed_backend() is None:
            return "nerfacc's CUDA backend is not loaded (nerfacc.cuda._backend._C is None)"
        return _run_packed(device)
    except NerfaccUnavailable as e:
        return _one_line(e)
    except Exception as e:  # a nerfacc or CUDA failure of any kind must not reach the user as a traceback
        return _one_line(f"nerfacc's packed path failed: {type(e).__name__}: {e}")
