"""Named arrays in one file that every process of a machine can map read-only.

The file is an ordinary *uncompressed* ``.npz`` (``np.load`` reads it as before), written so
that each member's data starts on a 64-byte boundary of the file: the local header of each ZIP
member carries a padding extra field (ID ``0x6166``, zeros) sized for that. :func:`read` then
maps the file once (``mmap``, read-only) and returns every member as a NumPy view into the
mapping, without reading or copying anything: the pages are read when first touched, live in the
operating system's page cache, and are shared by every process that maps the same file (the
workers of one node). A file that cannot be mapped member by member (the compressed ``.npz`` of
earlier versions, or a member that is not aligned for its dtype) is read into memory as before.

A mapping keeps the file's inode alive: the file is only ever replaced by renaming a complete
new file over it (:func:`write`), never rewritten in place, so a process that still maps the old
file goes on reading consistent, old data.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile

import numpy as np

from ._atomic import writing

ALIGN = 64
_PAD_ID = 0x6166  # ZIP extra-field ID of the padding (unassigned; readers skip unknown fields)
_LOCAL_HEADER = 30  # bytes of a ZIP local file header before the name and the extra field
_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member time stamps: equal arrays give byte-identical files


def _padding(offset: int) -> bytes:
    """An extra field that moves a member's data (at ``offset`` without it) to a multiple of ALIGN."""
    n = -offset % ALIGN
    if n == 0:
        return b""
    if n < 4:  # an extra field has a 4-byte header
        n += ALIGN
    return struct.pack("<HH", _PAD_ID, n - 4) + bytes(n - 4)


def write(path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (name -> array; no object dtypes) to ``path`` as an uncompressed ``.npz``
    with 64-byte aligned members, under a temporary name renamed into place when complete (a
    failure leaves neither a partial file nor the temporary one)."""
    with writing(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=False)  # header: a multiple of 64
            data = buf.getvalue()
            zi = zipfile.ZipInfo(f"{name}.npy", date_time=_DATE)
            zi.compress_type = zipfile.ZIP_STORED
            zi.external_attr = 0o644 << 16
            zi.extra = _padding(fh.tell() + _LOCAL_HEADER + len(zi.filename.encode()))
            zf.writestr(zi, data)


def _member(mm, zi: zipfile.ZipInfo, path) -> np.ndarray | None:
    """A stored member as a read-only view into the mapping ``mm``; None if it cannot be one."""
    h = zi.header_offset
    (sig,) = struct.unpack("<I", mm[h : h + 4])
    if sig != 0x04034B50:
        raise ValueError(f"{path}: member {zi.filename} has no ZIP local header at offset {h}")
    n_name, n_extra = struct.unpack("<HH", mm[h + 26 : h + _LOCAL_HEADER])
    start = h + _LOCAL_HEADER + n_name + n_extra
    f = io.BytesIO(mm[start : start + min(zi.file_size, 1 << 17)])
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    if dtype.hasobject:
        raise ValueError(f"{path}: member {zi.filename} holds Python objects; refusing to read it")
    offset = start + f.tell()
    count = int(np.prod(shape, dtype=np.int64))
    if offset % max(dtype.alignment, 1) or offset + count * dtype.itemsize > start + zi.file_size:
        return None
    a = np.frombuffer(mm, dtype=dtype, count=count, offset=offset)
    return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)


def mappable(path) -> bool:
    """Whether :func:`read` would map ``path`` (every member stored uncompressed), from the ZIP
    directory alone."""
    with zipfile.ZipFile(path) as zf:
        return _stored(zf.infolist())


def _stored(infos) -> bool:
    return bool(infos) and all(zi.compress_type == zipfile.ZIP_STORED and zi.filename.endswith(".npy") for zi in infos)


def read(path) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays of a ``.npz`` by name, and whether they are mapped (read-only views into one
    shared mapping of the file) rather than read into this process's memory."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    if _stored(infos):
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        out = {}
        for zi in infos:
            a = _member(mm, zi, path)
            if a is None:
                break
            out[zi.filename[:-4]] = a
        else:
            return out, True
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}, False
