"""The module's own output through the results layer: 11 SCOORD point groups, validators clean.

The node's end-to-end path (push → job → SR back to PACS) is tested in ``tests/e2e``; this
checks that what ``SpineModule.predict`` and ``render`` return on a written synthetic
study becomes an SR and an SC that dciodvfy, dsrdump and PixelMed accept.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import torch
import validators

from ai.core.dicomio import study_views_from_files
from ai.core.models import load_model
from ai.spine.module import SpineModule
from ai.spine.synthetic import synthetic_samples
from dicomnode.config import Settings
from dicomnode.results.build import build_results


def _content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_content_items(item))
    return out


@pytest.mark.slow
def test_predicted_landmarks_become_an_sr_with_eleven_point_groups_that_validates(
        tmp_path: Path) -> None:
    torch.set_num_threads(2)
    module = SpineModule()
    model = load_model(module.bundled_model_path(), module)
    sample = synthetic_samples(1, seed=31)[0]
    paths = module.write_dicom([sample], tmp_path / "in")
    (study,) = study_views_from_files(paths)
    (case,) = module.select(study).cases
    findings = module.predict(case, model)
    images = module.render(case, findings)
    objects = build_results(findings, images, [i.path for i in case.inputs],
                            Settings(node={"aetitle": "DICOMNODE"}))
    out = tmp_path / "out"
    out.mkdir()
    files = {}
    for k, obj in enumerate(objects):
        files[obj.kind] = out / f"{k}-{obj.kind}.dcm"
        obj.dataset.save_as(files[obj.kind], enforce_file_format=True)
    sr = pydicom.dcmread(files["SR"])
    points = [i for i in _content_items(sr)
              if i.ValueType == "SCOORD" and i.GraphicType == "POINT"]
    assert len(points) == 11
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for p in points for i in p.get("ContentSequence", [])
            if "ReferencedSOPSequence" in i}
    assert refs == {sample.key_sop_instance_uid}
    for path in (files["SR"], files["SC"]):
        report = validators.dciodvfy(path)
        assert report.errors == [], str(report)
    assert validators.dsrdump(files["SR"]).errors == []
    (pixelmed,) = validators.pixelmed_sr([files["SR"]]).values()
    assert pixelmed.errors == [], str(pixelmed)
    assert validators.dcentvfy([*(i.path for i in case.inputs), *files.values()]).errors == []
