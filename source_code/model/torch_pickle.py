"""Read a PyTorch state dict saved in the old (non-zip) ``.pth`` layout, without PyTorch.

Why not ``torch.load``: it would pull in PyTorch (2 GB) for one file, and its
pickle may name any Python callable. Here the unpickler resolves exactly the
names a state dict needs (the tensor-rebuild function, the storage types and
``collections.OrderedDict``) and refuses every other one, so nothing in the
file can run code.

Layout (as written by ``torch.save(..., _use_new_zipfile_serialization=False)``):
four pickles in a row (magic number, protocol version, system info, the state
dict whose storages are persistent ids ``('storage', type, key, location,
numel)``), a pickled list of storage keys, then each storage's raw
little-endian data preceded by its 8-byte element count.
"""
from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8}


class TorchFileError(ValueError):
    """The file is not a plain old-layout PyTorch state dict."""


@dataclass(frozen=True)
class _TensorRef:
    storage_key: str
    storage_type: str
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, offset, size, stride, *_ignored):
    return _TensorRef(storage[2], storage[1], int(offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return name
        raise TorchFileError(f"refusing to load {module}.{name}: a state dict needs only tensors")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        return pid


def read_state_dict(path) -> dict[str, np.ndarray]:
    """name -> numpy array (copies, in the tensor's own shape and strides)."""
    with open(Path(path), "rb") as fh:
        load = lambda: _StateDictUnpickler(fh).load()
        if load() != MAGIC_NUMBER:
            raise TorchFileError(f"{path} is not an old-layout PyTorch file (no magic number)")
        load()  # protocol version
        load()  # system info
        refs = load()
        if not isinstance(refs, dict):
            raise TorchFileError(f"{path} holds a {type(refs).__name__}, not a state dict")
        storage_types = {ref.storage_key: ref.storage_type for ref in refs.values()}
        storages = {}
        for key in load():
            count = struct.unpack("<q", fh.read(8))[0]
            dtype = np.dtype(_DTYPES[storage_types[key]]).newbyteorder("<")
            storages[key] = np.frombuffer(fh.read(count * dtype.itemsize), dtype, count)
    return {name: _materialise(ref, storages) for name, ref in refs.items()}


def _materialise(ref: _TensorRef, storages: dict) -> np.ndarray:
    flat = storages[ref.storage_key]
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.size,
                                           strides=tuple(s * itemsize for s in ref.stride))
    return np.array(view)
