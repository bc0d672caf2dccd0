"""Pure-Python (numpy) safetensors reader/writer, byte-compatible with formats/safetensors.c.

Debian ships no `safetensors` package, so the golden-data generator and users who want
to look at mimicps checkpoints from PyTorch use this instead:

    import safetensors_io as st
    tensors, meta = st.load("runs/x/ckpt.safetensors")          # torch tensors if torch imports
    model.load_state_dict({k: v for k, v in tensors.items() if k in model.state_dict()})
    st.save("out.safetensors", {"w": np.zeros((2, 3), np.float32)}, {"format": "x"})

Files it writes are also readable by huggingface's safetensors (compact JSON header,
__metadata__ first, contiguous data, header padded with spaces to 8 bytes).
"""

import json
import os
import struct

import numpy as np

_NP = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_SIZE = {"BF16": 2, **{k: np.dtype(v).itemsize for k, v in _NP.items()}}
_NAME = {np.dtype(v): k for k, v in _NP.items()}
MAX_HEADER = 100 * 1024 * 1024


def _as_numpy(x):
    """numpy array (little-endian, C order) from a numpy array or a CPU torch tensor."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            raise TypeError("BF16 tensors: convert to float32 before saving")
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype not in _NAME and a.dtype.newbyteorder("<") not in _NAME:
        raise TypeError(f"unsupported dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def save(path, tensors, metadata=None):
    """Writes {name: array} (insertion order kept) and {str: str} metadata atomically."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, x in tensors.items():
        if not name or name == "__metadata__":
            raise ValueError(f"bad tensor name {name!r}")
        a = _as_numpy(x)
        data = a.tobytes()
        header[name] = {"dtype": _NAME[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hdr = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hdr += b" " * (-(8 + len(hdr)) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hdr)))
            f.write(hdr)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def read_header(path):
    """(header dict without __metadata__, metadata dict, raw data bytes), validated."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: file too short")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER or n > len(raw) - 8:
        raise ValueError(f"{path}: header length {n} out of range")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: bad header JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not an object")
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(raw)[8 + n:]
    spans = []
    for name, e in header.items():
        dt, shape, (b, end) = e["dtype"], e["shape"], e["data_offsets"]
        if dt not in _SIZE or any((not isinstance(s, int)) or s < 0 for s in shape):
            raise ValueError(f"{path}: tensor {name!r}: bad dtype or shape")
        if not 0 <= b <= end <= len(data) or end - b != int(np.prod(shape)) * _SIZE[dt]:
            raise ValueError(f"{path}: tensor {name!r}: bad data_offsets")
        if end > b:
            spans.append((b, end, name))
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {n0!r} and {n1!r} overlap")
    return header, meta, data


def load(path, framework="auto"):
    """(dict name -> tensor, metadata dict). framework: "pt" (torch tensors), "np" (numpy
    arrays) or "auto" (torch when it imports). BF16 loads as torch.bfloat16, or as float32
    in numpy. Tensors are copies in file order."""
    header, meta, data = read_header(path)
    torch = None
    if framework in ("pt", "auto"):
        try:
            import torch  # noqa: F811
        except ImportError:
            if framework == "pt":
                raise
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        shape = tuple(e["shape"])
        if e["dtype"] == "BF16":
            bits = np.frombuffer(data[b:end], dtype="<u2").reshape(shape)
            if torch is not None:
                out[name] = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)
                continue
            a = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(data[b:end], dtype=_NP[e["dtype"]]).reshape(shape).copy()
        out[name] = torch.from_numpy(a) if torch is not None else a
    return out, meta
