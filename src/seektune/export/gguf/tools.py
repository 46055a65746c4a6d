"""Install and locate llama.cpp's HF -> GGUF converter without network at run time.

PyPI's `gguf` has the writer but not the converter, and lacks architecture names the DeepSeek
converter uses. The `llama-cpp-python` source package carries both (vendor/llama.cpp), so
`make gguf-tools` (python -m seektune.export.gguf.tools) fetches that pinned sdist from the
registry with pip (or takes a copy given with --sdist, for machines without the registry),
checks its sha256 and extracts only the converter, its `conversion/` package and its `gguf-py`
into a folder inside the venv. Nothing is compiled; k-quants need the built package (out of scope).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...utils.digest import file_sha256

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
_VENDOR = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
# what is extracted: the converter script, its model classes, its own gguf package, the licence
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
MANIFEST = "seektune_gguf_tools.json"
ENV_DIR = "SEEKTUNE_GGUF_TOOLS"
# no square brackets: the CLI prints errors through rich, which would eat "[gguf]" as markup
INSTALL_HINT = ("the GGUF converter is not installed: run `make gguf-tools` (it installs seektune's gguf extra, "
                "then runs `python -m seektune.export.gguf.tools`; offline: add --sdist FILE with a copy of "
                + SDIST_NAME + ")")


class ToolsMissing(RuntimeError):
    """The converter folder is absent or incomplete; the message says what to install."""


@dataclass
class Converter:
    root: Path  # holds convert_hf_to_gguf.py and conversion/

    @property
    def script(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"


def default_dir() -> Path:
    """Inside the active venv, so the tools live and die with the environment they match."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return Path(sys.prefix) / "share" / "seektune" / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def missing_python_packages() -> list[str]:
    import importlib.util

    return [p for p in ("sentencepiece",) if importlib.util.find_spec(p) is None]


def locate(root: Path | None = None) -> Converter:
    """The installed converter, or ToolsMissing naming the install step."""
    root = Path(root) if root else default_dir()
    man = root / MANIFEST
    if not man.exists():
        raise ToolsMissing(f"{INSTALL_HINT}; looked in {root}")
    info = json.loads(man.read_text(encoding="utf-8"))
    if info.get("version") != LLAMA_CPP_PYTHON:
        raise ToolsMissing(f"{root} holds llama.cpp tools from llama-cpp-python {info.get('version')}, "
                           f"seektune pins {LLAMA_CPP_PYTHON}: {INSTALL_HINT}")
    conv = Converter(root)
    if not (conv.script.exists() and (conv.gguf_py / "gguf" / "__init__.py").exists()):
        raise ToolsMissing(f"{root} is incomplete: {INSTALL_HINT}")
    missing = missing_python_packages()
    if missing:
        raise ToolsMissing(f"the converter needs {', '.join(missing)}: run `make gguf-tools` (seektune's gguf extra, "
                           "versions pinned in requirements.lock)")
    return conv


def fetch_sdist(dest: Path) -> Path:
    """pip download of the pinned sdist (no build: only this package from source, build deps as wheels)."""
    cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "--no-deps",
           "--no-binary", "llama-cpp-python", "--disable-pip-version-check", "-q", "-d", str(dest)]
    subprocess.run(cmd, check=True)
    return dest / SDIST_NAME


def _members(tar: tarfile.TarFile):
    for m in tar.getmembers():
        if not m.name.startswith(_VENDOR):
            continue
        rel = m.name[len(_VENDOR):]
        if not any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in _KEEP):
            continue
        if not (m.isfile() or m.isdir()) or ".." in Path(rel).parts or rel.startswith("/"):
            raise ToolsMissing(f"{SDIST_NAME}: refusing unexpected member {m.name!r}")
        yield rel, m


def extract(sdist: Path, root: Path) -> int:
    """Verify the sdist's sha256, then write only the converter files into `root` (replaced whole)."""
    got = file_sha256(sdist)
    if got != SDIST_SHA256:
        raise ToolsMissing(f"{sdist}: sha256 {got} is not the pinned {SDIST_SHA256}; not extracting")
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    n = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for rel, m in _members(tar):
            target = tmp / rel
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
    (tmp / MANIFEST).write_text(json.dumps({"package": "llama-cpp-python", "version": LLAMA_CPP_PYTHON,
                                            "sdist_sha256": got, "files": n}, indent=2), encoding="utf-8")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    return n


def install(root: Path | None = None, sdist: Path | None = None) -> Path:
    root = Path(root) if root else default_dir()
    if sdist is not None:
        return _done(root, extract(Path(sdist), root))
    with tempfile.TemporaryDirectory() as d:
        return _done(root, extract(fetch_sdist(Path(d)), root))


def _done(root: Path, n: int) -> Path:
    print(f"llama.cpp converter from llama-cpp-python {LLAMA_CPP_PYTHON} (sha256 verified): {n} files in {root}")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m seektune.export.gguf.tools", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help=f"install folder (default: {default_dir()})")
    ap.add_argument("--sdist", type=Path, default=None, help=f"a local copy of {SDIST_NAME} (no registry needed)")
    ap.add_argument("--if-missing", action="store_true", help="do nothing when the pinned version is installed")
    a = ap.parse_args(argv)
    if a.if_missing:
        try:
            conv = locate(a.dir)
            print(f"llama.cpp converter {LLAMA_CPP_PYTHON} already in {conv.root}")
            return 0
        except ToolsMissing:
            pass
    try:
        install(a.dir, a.sdist)
    except (ToolsMissing, subprocess.CalledProcessError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
