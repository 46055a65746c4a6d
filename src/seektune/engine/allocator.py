"""Which malloc a CPU training process runs on: tcmalloc or jemalloc when installed, else glibc's.

Why (docs/benchmarks.md, "Issue 22"): a CPU training step frees and re-allocates gigabytes of
activations. glibc either keeps them (fast, but peak RSS ~1.5x the tensors) or, with a lower mmap
threshold (engine/memory.py), unmaps them and pays page faults on every step (~20-25% slower).
jemalloc and tcmalloc reuse freed pages across steps without either cost. They cannot be switched on
inside a running Python process, so `seektune train` re-executes itself once with LD_PRELOAD set
(what torch's own `torch.backends.xeon.run_cpu --enable-jemalloc` launcher does; that launcher only
looks for `lib*.so` and misses Debian's multiarch `libjemalloc.so.2`).

    apt-get install libtcmalloc-minimal4  # or libjemalloc2; `conda install gperftools` / `jemalloc` elsewhere

Measured on the SFT benchmark job (docs/benchmarks.md, "Issue 22"): tcmalloc 35.5 s/step at 5.4 GB peak
RSS, jemalloc 36.8 s at 5.7 GB, glibc with seektune's mmap threshold 52.9 s at 6.0 GB, glibc keeping
freed memory 39.3 s at 9.4 GB. `auto` takes tcmalloc, then jemalloc, then glibc.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHOICES = ("auto", "jemalloc", "tcmalloc", "glibc")
LIBS = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
        "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")}
INSTALL = {"jemalloc": "apt-get install libjemalloc2 (or conda install -c conda-forge jemalloc)",
           "tcmalloc": "apt-get install libtcmalloc-minimal4 (or conda install -c conda-forge gperftools)"}
# jemalloc: big allocations from their own extents (oversize_threshold), purging by a background thread
# instead of inside the step (torch's run_cpu uses these three); freed pages go back to the OS after the
# decay time, or never (-1) with train.return_freed_memory: false.
MALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:{ms},muzzy_decay_ms:{ms}"
DECAY_MS = 10_000
MARKER = "SEEKTUNE_ALLOCATOR_EXEC"  # set in the re-executed process: never re-execute twice


def _search_dirs() -> list[Path]:
    dirs = [os.environ.get(k) for k in ("VIRTUAL_ENV", "CONDA_PREFIX")]
    out = [Path(d) / "lib" for d in dirs if d] + [Path(sys.prefix) / "lib"]
    out += [Path(p) for p in ("/usr/local/lib", "/usr/local/lib64", "/usr/lib", "/usr/lib64", "/lib")]
    machine = os.uname().machine
    out += [Path(f"/usr/lib/{machine}-linux-gnu"), Path(f"/lib/{machine}-linux-gnu")]
    return out


def find(name: str) -> str | None:
    """The path of allocator `name`'s shared library, or None when it is not installed."""
    for d in _search_dirs():
        for lib in LIBS[name]:
            if (d / lib).is_file():
                return str(d / lib)
    try:  # the dynamic linker's own cache knows the rest
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in cache.splitlines():
        lib, _, path = line.strip().partition(" => ")
        if lib.split(" ")[0] in LIBS[name] and Path(path).is_file():
            return path
    return None


def active() -> str:
    """The allocator this process runs on: jemalloc, tcmalloc or glibc."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


def choose(setting: str) -> tuple[str | None, str]:
    """(library path or None, the allocator that will run) for a `train.allocator` setting.
    Raises ValueError naming the install command when an explicitly asked one is missing."""
    if setting not in CHOICES:
        raise ValueError(f"train.allocator: {setting!r} is not one of {', '.join(CHOICES)}")
    if setting == "glibc" or not sys.platform.startswith("linux"):
        return None, "glibc"
    for name in (("tcmalloc", "jemalloc") if setting == "auto" else (setting,)):  # auto: the faster first
        path = find(name)
        if path:
            return path, name
        if setting != "auto":
            raise ValueError(f"train.allocator: {name} is not installed: {INSTALL[name]}, or set "
                             f"train.allocator: auto (glibc, with seektune's mmap threshold)")
    return None, "glibc"


def returns_freed(setting, name: str) -> bool:
    """`train.return_freed_memory` resolved for allocator `name`: auto = only glibc's mmap threshold (jemalloc
    and tcmalloc reuse freed pages without glibc's growth; returning them cost jemalloc page faults)."""
    return name == "glibc" if setting == "auto" else bool(setting)


def preload_env(path: str, name: str, return_freed: bool = False, env: dict | None = None) -> dict:
    """`env` (default: os.environ) with `path` first on LD_PRELOAD and the allocator's release policy
    (MALLOC_CONF for jemalloc, TCMALLOC_RELEASE_RATE for tcmalloc; a value the user set wins)."""
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = ":".join([path] + [p for p in env.get("LD_PRELOAD", "").split(":") if p and p != path])
    if name == "jemalloc":
        env.setdefault("MALLOC_CONF", MALLOC_CONF.format(ms=DECAY_MS if return_freed else -1))
    elif name == "tcmalloc" and not return_freed:
        env.setdefault("TCMALLOC_RELEASE_RATE", "0")
    env[MARKER] = name
    return env


def reexec_with(setting: str, return_freed="auto", argv: list[str] | None = None) -> None:
    """Re-execute this process (same interpreter and arguments) on the chosen allocator, once. Returns
    without doing anything when glibc is chosen, when that allocator already runs, or in the
    re-executed process itself. Call before heavy imports: nothing done before it survives."""
    argv = list(sys.argv if argv is None else argv)
    path, name = choose(setting)  # an allocator asked for by name but missing is an error everywhere
    if os.environ.get(MARKER) or os.environ.get("SEEKTUNE_NO_REEXEC") or not is_seektune_cli(argv):
        return  # in-process callers (tests, CliRunner, notebooks) keep their process: exec would replace it
    if path is None or active() == name:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *(_python_flags()), *argv_for_exec(argv)],
              preload_env(path, name, returns_freed(return_freed, name)))


def is_seektune_cli(argv: list[str]) -> bool:
    """True when this process is the `seektune` command itself (its console script or `python -m seektune`)."""
    first = Path(argv[0]) if argv else Path()
    return first.name == "seektune" or (first.name == "__main__.py" and first.parent.name == "seektune")


def _python_flags() -> list[str]:
    return [f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()]


def argv_for_exec(argv: list[str]) -> list[str]:
    """sys.argv as the interpreter needs it again: `python -m seektune ...` leaves the module's file
    path in argv[0], which would run it as a script outside its package."""
    first = Path(argv[0]) if argv else Path()
    if first.name == "__main__.py" and first.parent.name == "seektune":
        return ["-m", "seektune", *argv[1:]]
    return argv
