"""quality: synthetic ground truth, DICOM output, MinIP, selection and the CSV format."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from ai.core.contract import InstanceView, SeriesView, StudyView
from ai.core.dicomio import study_views_from_files
from ai.quality.datasets import QualitySample, load_csv
from ai.quality.module import QualityModule
from ai.quality.synthetic import (
    BACKGROUND,
    MAX_VALUE,
    MOTION_RANGE,
    PERFUSION_SHARE,
    SKULL_MARGIN,
    SKULL_OVERSHOOT,
    draw_params,
    render_run,
    skull_clearance,
)
from ai.quality.transforms import QualityPreprocess, minip_from_file

DCIODVFY = Path("/usr/bin/dciodvfy")


@pytest.fixture(scope="module")
def module() -> QualityModule:
    return QualityModule()


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dicomnode synth quality` output, run as a user runs it."""
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, "-m", "dicomnode.cli.main", "synth", "quality", "--out",
                    str(out), "--n", "3", "--seed", "5"], check=True, capture_output=True,
                   timeout=300)
    return out


def test_labels_follow_from_the_run_parameters(module: QualityModule) -> None:
    for sample in module.synthetic(200, seed=11):
        p = sample.params
        assert p is not None
        clearance = skull_clearance(p)
        if p.labels["skull"] == "complete":
            assert clearance >= SKULL_MARGIN
        else:
            assert clearance <= -SKULL_OVERSHOOT
        lo, hi = MOTION_RANGE[p.labels["motion"]]
        assert lo <= p.max_shift <= hi
        primary = abs(p.primary_angle)
        assert {"ap": primary < 10, "lateral": 80 < primary < 100,
                "oblique": 15 < primary < 45}[p.labels["projection"]]
        assert (p.contrast_strength > 0) == (p.labels["contrast"] == "present")
        expected = (p.labels["contrast"] == "present" and p.labels["motion"] != "severe"
                    and p.labels["noise"] == "mild")
        assert (p.labels["suitable"] == "yes") == expected


def test_same_seed_renders_the_same_run(module: QualityModule) -> None:
    a, b = module.synthetic(2, seed=3), module.synthetic(2, seed=3)
    np.testing.assert_array_equal(a[1].minip(), b[1].minip())
    assert not np.array_equal(a[0].minip(), module.synthetic(1, seed=4)[0].minip())


def test_contrast_darkens_the_minip(module: QualityModule) -> None:
    samples = module.synthetic(60, seed=21)
    dark = {"present": [], "absent": []}  # type: dict[str, list[float]]
    for s in samples:
        if s.labels["shutter"] == "absent" and s.labels["noise"] == "mild":
            dark[s.labels["contrast"]].append(float(np.percentile(s.minip(), 0.2)))
    assert np.mean(dark["present"]) < np.mean(dark["absent"]) - 50


def test_synth_output_passes_dciodvfy(synth_dir: Path) -> None:
    files = sorted(synth_dir.glob("*.dcm"))
    assert len(files) == 3
    for f in files:
        res = subprocess.run([str(DCIODVFY), str(f)], capture_output=True, text=True)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if "Error" in line]
        assert errors == [], f"{f.name}: {errors}"


def test_synth_output_has_consistent_xa_headers(synth_dir: Path) -> None:
    rows = {r.split(",")[0]: r.split(",") for r in (synth_dir / "labels.csv").read_text().split()}
    for f in sorted(synth_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1" and ds.Modality == "XA"
        assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"] and "SUBTRACTION" in ds.ImageType
        assert ds.NumberOfFrames > 1 and float(ds.FrameTime) > 0 and ds.BodyPartExamined == "HEAD"
        projection = rows[f.name][2]
        angle = abs(float(ds.PositionerPrimaryAngle))
        assert (angle >= 45) == (projection == "lateral")


def test_synth_output_is_routed_to_quality(module: QualityModule, synth_dir: Path) -> None:
    views = study_views_from_files(sorted(synth_dir.glob("*.dcm")))
    assert len(views) == 3
    for view in views:
        selection = module.select(view)
        assert len(selection.cases) == 1 and selection.cases[0].module == "quality"


def test_csv_loader_reads_dicom_runs_and_png_minips(synth_dir: Path, tmp_path: Path) -> None:
    samples = load_csv(synth_dir / "labels.csv")
    assert len(samples) == 3 and samples[0].labels["contrast"] in ("present", "absent")
    minip = samples[0].minip()
    with_full = pydicom.dcmread(samples[0].path).pixel_array.min(axis=0)  # type: ignore[arg-type]
    np.testing.assert_array_equal(minip, with_full)
    Image.fromarray((minip >> 2).astype(np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "labels.csv").write_text("path,contrast,motion\nm.png,Present,\n")
    (png,) = load_csv(tmp_path)
    assert png.labels == {"contrast": "present"}  # empty cell = not rated
    assert png.minip().shape == minip.shape


def test_csv_with_a_missing_file_names_the_row(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,contrast\nnope.dcm,present\n")
    with pytest.raises(ValueError, match="labels.csv:2"):
        load_csv(tmp_path / "labels.csv")


def test_streaming_minip_equals_the_full_minimum_and_keeps_the_stored_type(
    module: QualityModule, tmp_path: Path
) -> None:
    (path,) = module.write_dicom(module.synthetic(1, seed=8), tmp_path)
    minip, header = minip_from_file(path)
    full = pydicom.dcmread(path).pixel_array
    assert minip.dtype == np.uint16
    np.testing.assert_array_equal(minip, full.min(axis=0))
    # MONOCHROME1 shows contrast bright: its maximum, inverted, is the same MinIP.
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = (1023 - full).astype(np.uint16).tobytes()
    ds.save_as(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(minip_from_file(tmp_path / "m1.dcm")[0], minip)


def test_preprocessing_pads_with_the_background_not_black() -> None:
    img = np.full((60, 100), 700, np.uint16)
    img[20:40, 40:60] = 100
    out = QualityPreprocess(32)(img)
    assert tuple(out.shape) == (1, 32, 32)
    assert float(out.min()) < 0.2
    assert float(out[0, 0, 0]) == pytest.approx(1 / 1.5)  # padded corner = background


def _xa_instance(uid: str, frames: int, image_type: tuple[str, ...], **attrs: object
                 ) -> tuple[SeriesView, InstanceView]:
    inst = InstanceView(sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.12.1",
                        path=Path(f"/nonexistent/{uid}.dcm"), number_of_frames=frames,
                        attributes={"ImageType": list(image_type), **attrs})
    return SeriesView(series_instance_uid=f"s{uid}", modality="XA", instances=(inst,),
                      image_type=image_type), inst


@pytest.mark.parametrize(
    ("frames", "image_type", "attrs", "selected"),
    [
        (30, ("DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTION"), {}, True),
        (30, ("ORIGINAL", "PRIMARY", "SUBTRACTED"), {}, True),
        (30, ("ORIGINAL", "PRIMARY", "BIPLANE A"), {"RecommendedViewingMode": "SUB"}, True),
        (30, ("ORIGINAL", "PRIMARY", "SINGLE PLANE"), {}, False),  # native cine
        (1, ("DERIVED", "PRIMARY", "SINGLE PLANE", "SUBTRACTION"), {}, False),  # one frame
    ],
)
def test_select_takes_subtracted_multiframe_xa_runs(
    module: QualityModule, frames: int, image_type: tuple[str, ...], attrs: dict[str, object],
    selected: bool,
) -> None:
    series, _ = _xa_instance("1", frames, image_type, **attrs)
    mr = SeriesView(series_instance_uid="mr", modality="MR", instances=())
    selection = module.select(StudyView(study_instance_uid="9", series=(series, mr)))
    assert bool(selection.cases) == selected
    if not selected:
        assert "no subtracted" in selection.reason


def test_a_bench_sample_renders_at_the_target_size(module: QualityModule) -> None:
    (s,) = module.benchmark_samples(1, seed=1)
    assert isinstance(s, QualitySample) and s.size == 1024 and s.frames == 60


def test_unknown_classes_in_a_csv_are_reported(module: QualityModule, tmp_path: Path) -> None:
    sample = QualitySample(labels={"contrast": "maybe"}, path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="maybe"):
        module.transform(module.default_config(), train=True)(sample)


def test_the_minip_of_a_large_run_holds_one_frame_not_the_run(tmp_path: Path) -> None:
    import tracemalloc

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.random.default_rng(0).integers(0, 1024, (30, 512, 512), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.12.1", generate_uid()
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = 30
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 10, 9, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    expected = frames.min(axis=0)
    del frames, ds
    tracemalloc.start()
    minip, _ = minip_from_file(tmp_path / "big.dcm")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(minip, expected)
    frame_bytes = 512 * 512 * 2
    assert peak < 3 * frame_bytes, f"peak {peak / 2**20:.1f} MiB for a {30 * frame_bytes / 2**20:.0f} MiB run"


def test_a_run_looks_alike_at_the_training_and_clinical_matrix(module: QualityModule) -> None:
    # Training renders at the input size (128²); the node sees 512²–1024² runs.  The
    # network input from both must agree, or the bundled model would not transfer.
    pre = QualityPreprocess(128)
    for sample in module.synthetic(4, seed=12):
        small = pre(sample.minip())
        large = pre(QualitySample(sample.labels, sample.params, size=512).minip())
        assert float((small - large).abs().mean()) < 0.05


def test_every_draw_places_the_skull_even_under_heavy_shutters() -> None:
    from ai.quality.synthetic import draw_params

    rng = np.random.default_rng(0)
    for i in range(4000):
        p = draw_params(rng, i)
        clearance = skull_clearance(p)
        assert clearance >= SKULL_MARGIN if p.labels["skull"] == "complete" else (
            clearance <= -SKULL_OVERSHOOT)


def test_perfusion_style_runs_are_contrast_runs_in_ap_or_lateral_with_dense_blush() -> None:
    params = [draw_params(np.random.default_rng(i), i) for i in range(300)]
    perfusion = [p for p in params if p.style == "perfusion"]
    eligible = [p for p in params if p.labels["contrast"] == "present"
                and p.labels["projection"] in ("ap", "lateral")]
    # About PERFUSION_SHARE of the eligible runs (binomial, n ≈ 170: ± 4 sd = ± 0.15).
    assert abs(len(perfusion) / len(eligible) - PERFUSION_SHARE) < 0.15
    assert {p.labels["contrast"] for p in perfusion} == {"present"}
    assert {p.labels["projection"] for p in perfusion} <= {"ap", "lateral"}
    for p in perfusion[:3]:
        minip = render_run(p, 128).min(axis=0) / MAX_VALUE
        # Parenchymal blush: a broad dark area, not only thin vessels.
        inside = minip[32:96, 32:96]
        assert np.mean(inside < 0.6 * BACKGROUND) > 0.05, p.seed
