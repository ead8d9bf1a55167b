"""The shared toolkit: module discovery, model versions, training loop, checkpoints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from ai.core.models import (
    ModelError,
    ModelIntegrityError,
    load_model,
    read_metadata,
    resolve_device,
    save_model_version,
)
from ai.core.pixels import FrameReader
from ai.core.registry import UnknownModuleError, available_modules, get_module
from train.checkpoint import CHECKPOINT_FILE
from train.evaluate import evaluate
from train.loop import merge_config, train


def test_quality_is_discovered_through_entry_points() -> None:
    assert "quality" in available_modules()
    assert get_module("quality").name == "quality"


def test_unknown_module_names_the_installed_ones() -> None:
    with pytest.raises(UnknownModuleError, match="quality"):
        get_module("no-such-module")


def test_merge_config_merges_nested_and_replaces_leaves() -> None:
    base = {"training": {"epochs": 3, "lr": 1e-3}, "network": {"width": [1, 2]}}
    out = merge_config(base, {"training": {"epochs": 5}, "network": {"width": [3]}})
    assert out == {"training": {"epochs": 5, "lr": 1e-3}, "network": {"width": [3]}}
    assert base["training"]["epochs"] == 3


def test_cuda_asked_for_without_cuda_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_toy_training_beats_chance_on_a_fresh_seed(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = train(toy, toy.synthetic(200, seed=1), toy.synthetic(60, seed=2), out_dir=tmp_path,
                   seed=0, progress=False, version="t1")
    model = load_model(result.path, toy)
    assert not model.network.training
    assert model.version == "t1" and model.sha256 == result.sha256
    assert evaluate(toy, model, toy.synthetic(100, seed=3))["auc"] > 0.9


def test_same_seed_gives_the_same_weights(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = toy.synthetic(64, seed=1)
    a = train(toy, data, [], out_dir=tmp_path / "a", seed=5, progress=False, version="x")
    b = train(toy, data, [], out_dir=tmp_path / "b", seed=5, progress=False, version="x")
    assert a.sha256 == b.sha256


def test_an_interrupted_training_resumes_where_it_stopped(
    toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    import train.loop as loop

    data = toy.synthetic(64, seed=1)
    ckpt = tmp_path / "ckpt"
    full = train(toy, data, [], out_dir=tmp_path / "full", seed=3, progress=False, version="v",
                 checkpoint_dir=tmp_path / "other")
    real_save = loop.save_checkpoint

    def save_then_die(directory: Path, **kw: object) -> Path:
        path = real_save(directory, **kw)  # type: ignore[arg-type]
        if kw["epoch"] == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(toy, data, [], out_dir=tmp_path / "r", seed=3, progress=False, checkpoint_dir=ckpt)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert (ckpt / CHECKPOINT_FILE).is_file()
    resumed = train(toy, data, [], out_dir=tmp_path / "r", seed=3, progress=False, version="v",
                    checkpoint_dir=ckpt)
    assert resumed.resumed_from_epoch == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    # Same schedule, same per-epoch shuffling: it ends where the uninterrupted run did.
    assert resumed.sha256 == full.sha256


def test_changed_weights_fail_the_sha256_check(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = save_model_version(tmp_path / "v", "toy", toy.network({}), {"network": {}},
                              version="v", command="test")
    meta = read_metadata(path)
    assert meta["command"] == "test" and len(meta["sha256"]) == 64
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelIntegrityError):
        load_model(path, toy)


def test_a_model_of_another_module_is_refused(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = save_model_version(tmp_path / "v", "toy", toy.network({}), {}, version="v")
    meta = json.loads((path / "metadata.json").read_text())
    meta["module"] = "quality"
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="quality"):
        load_model(path, toy)


def _multiframe(path: Path, frames: np.ndarray, syntax: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.NumberOfFrames = frames.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = frames.tobytes()
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True,
               enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_frames_are_memory_mapped_from_native_pixel_data(tmp_path: Path, syntax: str) -> None:
    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    path = _multiframe(tmp_path / "x.dcm", frames, syntax)
    reader = FrameReader(path)
    assert reader.is_memory_mapped
    np.testing.assert_array_equal(np.stack(list(reader)), frames)
    np.testing.assert_array_equal(reader.frame(2), pydicom.dcmread(path).pixel_array[2])


def test_compressed_pixel_data_is_decoded_frame_by_frame(tmp_path: Path) -> None:
    from pydicom.uid import RLELossless

    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    path = _multiframe(tmp_path / "x.dcm", frames, ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    reader = FrameReader(path)
    assert not reader.is_memory_mapped
    np.testing.assert_array_equal(np.stack(list(reader)), frames)


def test_a_change_to_a_module_s_code_changes_its_checkpoint_fingerprint(tmp_path: Path,
                                                                       monkeypatch: Any) -> None:
    """A checkpoint made before the module's generator changed is not resumed."""
    from train.checkpoint import code_digest

    pkg = tmp_path / "fakemod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "module.py").write_text("class M:\n    pass\n")
    (pkg / "synthetic.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("fakemod.module")
    before = code_digest(mod.M())
    assert code_digest(mod.M()) == before  # stable
    (pkg / "synthetic.py").write_text("SCALE = 2\n")  # the generator changed
    assert code_digest(mod.M()) != before
