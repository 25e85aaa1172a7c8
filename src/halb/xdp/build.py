"""Building the XDP object (clang, once, at install time; `halb xdp build`).

The C source ships in the package (bpf/halb_xdp.c); the object goes to a
build dir next to it (bpf/../build/) when that is writable, else to
/var/cache/halb/xdp. A stamp (the source's SHA-256) beside the object says
which source it was built from: a changed source is built again when clang
is there, and at run time an up-to-date object is all that is needed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from halb.xdp.libbpf import XdpError

SRC = Path(__file__).resolve().parent / "bpf" / "halb_xdp.c"
OBJ_NAME = "halb_xdp.o"
CACHE_DIR = Path("/var/cache/halb/xdp")


def build_dirs() -> list[Path]:
    env = os.environ.get("HALB_XDP_BUILD_DIR")
    if env:
        return [Path(env)]
    return [SRC.parent.parent / "build", CACHE_DIR]


def _digest(src: Path) -> str:
    return hashlib.sha256(src.read_bytes()).hexdigest()


def _stamp(obj: Path) -> Path:
    return obj.with_suffix(".sha256")


def find_object(src: Path = SRC) -> Path | None:
    """The object built from this source, if one exists."""
    want = _digest(src)
    for d in build_dirs():
        obj = d / OBJ_NAME
        try:
            if obj.is_file() and _stamp(obj).read_text().strip() == want:
                return obj
        except OSError:
            continue
    return None


def clang_path() -> str | None:
    env = os.environ.get("HALB_XDP_CLANG")
    if env is not None:
        return shutil.which(env) if env else None
    for name in ("clang", "clang-16", "clang-15", "clang-14"):
        p = shutil.which(name)
        if p:
            return p
    return None


def build(src: Path = SRC, out_dir: Path | None = None, force: bool = False) -> Path:
    """Compile src into an object; returns its path. XdpError (one line) when
    clang or the BPF headers are missing or the source does not compile."""
    if not force and src == SRC and out_dir is None:
        obj = find_object(src)
        if obj is not None:
            return obj
    clang = clang_path()
    if clang is None:
        raise XdpError("clang not found: cannot build the XDP program "
                       "(apt-get install clang llvm libbpf-dev, then halb xdp build)")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise XdpError("libbpf headers not found: cannot build the XDP program (apt-get install libbpf-dev)")
    dirs = [out_dir] if out_dir else build_dirs()
    last = None
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".w"
            probe.touch()
            probe.unlink()
        except OSError as e:
            last = e
            continue
        obj = d / (src.stem + ".o")
        tmp = d / (src.stem + ".o.tmp")
        multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip() \
            if shutil.which("gcc") else ""
        inc = [f"-I/usr/include/{multiarch or 'x86_64-linux-gnu'}"]
        argv = [clang, "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3", *inc,
                "-c", str(src), "-o", str(tmp)]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            errs = [ln for ln in r.stderr.splitlines() if "error" in ln]
            raise XdpError(f"clang could not build {src.name}: {(errs or r.stderr.splitlines() or ['?'])[0]}")
        os.replace(tmp, obj)
        _stamp(obj).write_text(_digest(src) + "\n")
        return obj
    raise XdpError(f"no writable build dir for the XDP object ({last})")


def ensure_object() -> Path:
    """The object to load: the built one, or built now when clang is here
    (first use after a source change); XdpError saying why not."""
    obj = find_object()
    if obj is not None:
        return obj
    if clang_path() is None:
        raise XdpError("the XDP program is not built and clang is not installed "
                       "(apt-get install clang llvm libbpf-dev, then halb xdp build)")
    return build()
