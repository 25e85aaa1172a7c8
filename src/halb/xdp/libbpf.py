"""The system libbpf (libbpf.so.1) through ctypes: load the object, attach it
with XDP, find its maps again from the attached program, read and write map
entries. No compiler and no BCC at run time: the object is built once
(halb.xdp.build).

Errors are XdpError with one line (the kernel's errno text, or the verifier's
last words when it rejects the program)."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import tempfile

from halb.errors import HalbError

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
BPF_PROG_TYPE_XDP = 6
BPF_ANY = 0
MAP_TYPES_PERCPU = (5, 6, 10)  # percpu hash, percpu array, lru percpu hash


class XdpError(HalbError):
    """The XDP data plane could not do something (one line)."""


_lib = None


def lib() -> ctypes.CDLL:
    """libbpf.so.1, with the prototypes halb uses (XdpError when absent)."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        L = ctypes.CDLL(name, use_errno=True)
    except OSError:
        try:
            L = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as e:
            raise XdpError(f"libbpf is not installed ({e}; apt-get install libbpf1)") from None
    vp, i, u32, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
    protos = {
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_program__fd": (i, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_xdp_attach": (i, [i, i, u32, vp]),
        "bpf_xdp_detach": (i, [i, u32, vp]),
        "bpf_xdp_query_id": (i, [i, i, ctypes.POINTER(u32)]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "bpf_map_get_fd_by_id": (i, [u32]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, ctypes.POINTER(u32)]),
        "bpf_prog_load": (i, [i, ctypes.c_char_p, ctypes.c_char_p, vp, sz, vp]),
        "libbpf_num_possible_cpus": (i, []),
    }
    for fn, (res, args) in protos.items():
        f = getattr(L, fn)
        f.restype, f.argtypes = res, args
    _lib = L
    return L


def _err(rc: int) -> int:
    """errno of a failed call (libbpf 1.x returns -errno and sets errno)."""
    return -rc if rc < 0 else (ctypes.get_errno() or errno.EINVAL)


def ncpus() -> int:
    return max(1, lib().libbpf_num_possible_cpus())


def load_object(path: str, prog_name: str = "halb_xdp") -> tuple[int, dict[str, int], int]:
    """Open and load the object: (program fd, {map name: fd}, object handle).
    A verifier rejection is one XdpError line with the verifier's verdict."""
    L = lib()
    # libbpf prints its diagnostics (the verifier log among them) on fd 2:
    # capture them to give one line instead of pages
    with tempfile.TemporaryFile() as cap:
        saved = os.dup(2)
        os.dup2(cap.fileno(), 2)
        try:
            obj = L.bpf_object__open_file(path.encode(), None)
            err = ctypes.get_errno()
            rc = L.bpf_object__load(obj) if obj else -(err or errno.ENOENT)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        cap.seek(0)
        log = cap.read().decode("utf-8", "replace")
    if not obj:
        raise XdpError(f"cannot open the XDP object {path}: {os.strerror(err or errno.ENOENT)}")
    if rc != 0:
        L.bpf_object__close(obj)
        raise XdpError(_load_failure(path, _err(rc), log))
    prog = L.bpf_object__find_program_by_name(obj, prog_name.encode())
    if not prog:
        L.bpf_object__close(obj)
        raise XdpError(f"{path}: no program '{prog_name}' in the XDP object")
    fd = L.bpf_program__fd(prog)
    return fd, {}, obj


def _load_failure(path: str, err: int, log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    verdict = ""
    # the verifier's own complaint is the line before "processed N insns"
    # or the last line naming an access or an invalid instruction
    for i, ln in enumerate(lines):
        if ln.startswith("processed ") and i > 0:
            verdict = lines[i - 1]
            if i > 1 and lines[i - 2].startswith("invalid"):
                verdict = f"{lines[i - 2]}: {verdict}"
    if not verdict:
        for ln in reversed(lines):
            low = ln.lower()
            if any(w in low for w in ("invalid", "unbounded", "out of range", "not allowed", "unreachable",
                                      "back-edge", "access", "r0 !read_ok", "unknown")):
                verdict = ln
                break
    if err == errno.EACCES or err == errno.EINVAL and verdict:
        return (f"the kernel's verifier rejected the XDP program ({os.path.basename(path)}): "
                f"{verdict or os.strerror(err)}")
    if err == errno.EPERM:
        return "loading the XDP program was refused (EPERM): it needs CAP_BPF and CAP_NET_ADMIN (run as root)"
    return f"cannot load the XDP program {os.path.basename(path)}: {os.strerror(err)}" + (
        f" ({verdict})" if verdict else "")


def close_object(obj) -> None:
    if obj:
        lib().bpf_object__close(obj)


def attach(ifindex: int, prog_fd: int, mode: str = "drv", replace: bool = True) -> None:
    flags = XDP_FLAGS_DRV_MODE if mode == "drv" else XDP_FLAGS_SKB_MODE
    if not replace:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    rc = lib().bpf_xdp_attach(ifindex, prog_fd, flags, None)
    if rc < 0:
        raise XdpError(os.strerror(_err(rc)))


def detach(ifindex: int, mode: str = "drv") -> None:
    flags = XDP_FLAGS_DRV_MODE if mode == "drv" else XDP_FLAGS_SKB_MODE
    rc = lib().bpf_xdp_detach(ifindex, flags, None)
    if rc < 0 and _err(rc) not in (errno.ENODEV, errno.ENOENT):
        raise XdpError(os.strerror(_err(rc)))


def query_id(ifindex: int, mode: str = "drv") -> int:
    """The id of the XDP program attached to the interface (0: none)."""
    flags = XDP_FLAGS_DRV_MODE if mode == "drv" else XDP_FLAGS_SKB_MODE
    pid = ctypes.c_uint32(0)
    rc = lib().bpf_xdp_query_id(ifindex, flags, ctypes.byref(pid))
    if rc < 0:
        return 0
    return pid.value


def prog_fd_by_id(prog_id: int) -> int:
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        raise XdpError(f"XDP program id {prog_id} is gone ({os.strerror(_err(fd))})")
    return fd


def prog_info(fd: int) -> tuple[str, list[int]]:
    """(program name, [map ids]) of a loaded program."""
    L = lib()
    buf = (ctypes.c_uint8 * 256)()
    ln = ctypes.c_uint32(256)
    if L.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(ln)) < 0:
        raise XdpError(f"cannot read the XDP program's info: {os.strerror(ctypes.get_errno())}")
    nr = int.from_bytes(bytes(buf[52:56]), "little")
    ids = (ctypes.c_uint32 * max(nr, 1))()
    buf2 = (ctypes.c_uint8 * 256)()
    ctypes.memmove(ctypes.addressof(buf2) + 52, ctypes.byref(ctypes.c_uint32(nr)), 4)
    ctypes.memmove(ctypes.addressof(buf2) + 56, ctypes.byref(ctypes.c_uint64(ctypes.addressof(ids))), 8)
    ln = ctypes.c_uint32(256)
    if L.bpf_obj_get_info_by_fd(fd, buf2, ctypes.byref(ln)) < 0:
        raise XdpError(f"cannot read the XDP program's maps: {os.strerror(ctypes.get_errno())}")
    name = bytes(buf[64:80]).split(b"\0", 1)[0].decode()
    return name, list(ids[:nr])


def map_info(fd: int) -> dict:
    buf = (ctypes.c_uint8 * 128)()
    ln = ctypes.c_uint32(128)
    if lib().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(ln)) < 0:
        raise XdpError(f"cannot read a map's info: {os.strerror(ctypes.get_errno())}")
    raw = bytes(buf)
    u = lambda o: int.from_bytes(raw[o:o + 4], "little")  # noqa: E731
    return {"type": u(0), "id": u(4), "key_size": u(8), "value_size": u(12), "max_entries": u(16),
            "name": raw[24:40].split(b"\0", 1)[0].decode()}


def map_fd_by_id(map_id: int) -> int:
    fd = lib().bpf_map_get_fd_by_id(map_id)
    if fd < 0:
        raise XdpError(f"XDP map id {map_id} is gone ({os.strerror(_err(fd))})")
    return fd


class Map:
    """One BPF map by fd: bytes keys and values."""

    def __init__(self, fd: int, info: dict | None = None):
        self.fd = fd
        self.info = info or map_info(fd)
        self.name = self.info["name"]
        self.ksize = self.info["key_size"]
        self.vsize = self.info["value_size"]
        self.percpu = self.info["type"] in MAP_TYPES_PERCPU
        self.ncpu = ncpus() if self.percpu else 1
        self.vstride = (self.vsize + 7) // 8 * 8 if self.percpu else self.vsize

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if self.percpu and len(value) == self.vsize:
            value = (value + bytes(self.vstride - self.vsize)) * self.ncpu
        rc = lib().bpf_map_update_elem(self.fd, key, value, flags)
        if rc < 0:
            raise XdpError(f"XDP map {self.name}: update failed: {os.strerror(_err(rc))}")

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        buf = ctypes.create_string_buffer(self.vstride * self.ncpu)
        rc = lib().bpf_map_lookup_elem(self.fd, key, buf)
        if rc < 0:
            return None
        raw = buf.raw
        if self.percpu:
            return [raw[i * self.vstride:i * self.vstride + self.vsize] for i in range(self.ncpu)]
        return raw[:self.vsize]

    def delete(self, key: bytes) -> bool:
        return lib().bpf_map_delete_elem(self.fd, key) == 0

    def keys(self) -> list[bytes]:
        out = []
        cur = None
        nxt = ctypes.create_string_buffer(self.ksize)
        L = lib()
        while True:
            rc = L.bpf_map_get_next_key(self.fd, cur, nxt)
            if rc < 0:
                break
            k = nxt.raw
            out.append(k)
            cur = ctypes.create_string_buffer(k, self.ksize)
            if len(out) > self.info["max_entries"] * 2:  # entries churn under us: enough
                break
        return out

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value): in batches of 4,096 (one system call each; the
        flow map can hold 262,144), key by key where batches are refused."""
        if not self.percpu:
            try:
                return self._items_batched()
            except XdpError:
                pass
        out = []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                out.append((k, v))
        return out


    def _items_batched(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        L = lib()
        ks, vs = self.ksize, self.vsize
        keys = ctypes.create_string_buffer(ks * chunk)
        vals = ctypes.create_string_buffer(vs * chunk)
        tok_in = ctypes.create_string_buffer(max(ks, 8))
        tok_out = ctypes.create_string_buffer(max(ks, 8))
        out = []
        first = True
        while True:
            n = ctypes.c_uint32(chunk)
            rc = L.bpf_map_lookup_batch(self.fd, None if first else tok_in, tok_out, keys, vals,
                                        ctypes.byref(n), None)
            err = _err(rc) if rc < 0 else 0
            if err and err != errno.ENOENT:
                raise XdpError(f"XDP map {self.name}: batch lookup failed: {os.strerror(err)}")
            kraw, vraw = keys.raw, vals.raw
            for j in range(n.value):
                out.append((kraw[j * ks:(j + 1) * ks], vraw[j * vs:(j + 1) * vs]))
            if err == errno.ENOENT:
                return out
            ctypes.memmove(tok_in, tok_out, len(tok_out.raw))
            first = False


def load_pass_program() -> int:
    """A two-instruction XDP program returning XDP_PASS (no object file):
    what the peer of a veth needs to receive XDP_TX frames."""
    insns = bytes([0xb7, 0x00, 0, 0, 2, 0, 0, 0,   # r0 = XDP_PASS
                   0x95, 0, 0, 0, 0, 0, 0, 0])     # exit
    buf = ctypes.create_string_buffer(insns, len(insns))
    fd = lib().bpf_prog_load(BPF_PROG_TYPE_XDP, b"halb_pass", b"GPL", buf, 2, None)
    if fd < 0:
        raise XdpError(f"cannot load an XDP_PASS program: {os.strerror(_err(fd))}")
    return fd
