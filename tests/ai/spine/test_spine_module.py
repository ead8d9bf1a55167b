"""predict() and render() on a written study: 11 points, coded grades, patient coordinates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from ai.core import codes
from ai.core.dicomio import study_views_from_files
from ai.core.models import LoadedModel
from ai.spine.geometry import patient_to_pixel
from ai.spine.labels import IDENTIFICATIONS
from ai.spine.module import SpineModule
from ai.spine.synthetic import synthetic_samples


@pytest.fixture
def tiny_model(tmp_path: Path) -> LoadedModel:
    module = SpineModule()
    config = module.default_config()
    config["network"].update({"widths": [8, 8, 16], "mid": 16})
    torch.manual_seed(0)
    net = module.network(config).eval()
    return LoadedModel(module="spine", version="test", sha256="0" * 64, network=net,
                       config=config, device=torch.device("cpu"), path=tmp_path)


def test_predict_reports_eleven_coded_landmarks_on_the_key_slice(
        tmp_path: Path, tiny_model: LoadedModel) -> None:
    module = SpineModule()
    sample = synthetic_samples(1, seed=21)[0]
    (study,) = study_views_from_files(module.write_dicom([sample], tmp_path))
    (case,) = module.select(study).cases
    findings = module.predict(case, tiny_model)
    assert findings.module == "spine" and findings.model_version == "test"
    assert len(findings.findings) == 11
    key = pydicom.dcmread(case.inputs[1].path)
    anatomy = {**codes.VERTEBRAE, **codes.DISCS}
    for ident, f in zip(IDENTIFICATIONS, findings.findings, strict=True):
        assert f.finding == anatomy[ident] and f.finding_site == anatomy[ident]
        assert f.references[0].sop_instance_uid == sample.key_sop_instance_uid
        assert f.tracking_id.startswith(ident + ":")
        schema = codes.DISC_GRADES if "-" in ident else codes.VERTEBRA_GRADES
        assert f.evaluations[0].concept == schema.concept
        assert f.evaluations[0].value in schema.values.values()
        assert 0.0 <= (f.evaluations[0].confidence or 0.0) <= 1.0
        # The patient point maps back to the pixel point through the slice geometry.
        assert f.point is not None and f.point.patient is not None
        col, row = patient_to_pixel(f.point.patient, key.ImagePositionPatient,
                                    key.ImageOrientationPatient, key.PixelSpacing)
        assert (col, row) == pytest.approx((f.point.column, f.point.row), abs=1e-6)
        # Sagittal slice: every point lies in the slice plane x = IPP x.
        assert f.point.patient[0] == pytest.approx(float(key.ImagePositionPatient[0]))
    assert len({f.tracking_id for f in findings.findings}) == 11


def test_render_draws_labelled_points_in_rgb(tmp_path: Path, tiny_model: LoadedModel) -> None:
    module = SpineModule()
    sample = synthetic_samples(1, seed=22)[0]
    (study,) = study_views_from_files(module.write_dicom([sample], tmp_path))
    (case,) = module.select(study).cases
    findings = module.predict(case, tiny_model)
    (image,) = module.render(case, findings)
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3
    assert image.pixels.shape[2] == 3 and min(image.pixels.shape[:2]) >= 512
    # Colour appears only where labels and rings were drawn on the grey slice.
    rgb = image.pixels.astype(int)
    coloured = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) > 60
    assert coloured.sum() > 500
    assert image.source.sop_instance_uid == sample.key_sop_instance_uid
    assert "abnormal" in image.caption
