"""The read-only :class:`~ai.core.contract.StudyView` a module sees, built from the index.

Instances carry their spool path (pixels are read lazily by the module) and their
header attributes by DICOM keyword: what ingest kept in ``Instance.attributes`` plus
the indexed columns, so a module reads ``PositionerPrimaryAngle`` or
``ImageOrientationPatient`` without opening a file.  Patient identity is not part of
the view: no module needs it.
"""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai.core.contract import InstanceView, SeriesView, StudyView
from dicomnode.storage.models import Instance, Series, Study


def _series_attributes(series: Series, study: Study) -> dict[str, Any]:
    image_type = [v for v in series.image_type.split("\\") if v] if series.image_type else []
    attrs: dict[str, Any] = {
        "StudyInstanceUID": study.study_instance_uid,
        "SeriesInstanceUID": series.series_instance_uid,
        "Modality": series.modality,
        "SeriesNumber": series.series_number,
        "SeriesDescription": series.series_description,
        "BodyPartExamined": series.body_part_examined,
        "ImageType": image_type,
        "ViewPosition": series.view_position,
        "ImageLaterality": series.image_laterality,
        "PositionerPrimaryAngle": series.positioner_primary_angle,
        "PositionerSecondaryAngle": series.positioner_secondary_angle,
        "StudyDescription": study.study_description,
        "StudyDate": study.study_date,
        "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number,
    }
    return {k: v for k, v in attrs.items() if v not in (None, "", [])}


def _instance_attributes(inst: Instance, base: dict[str, Any]) -> dict[str, Any]:
    own: dict[str, Any] = {
        "SOPClassUID": inst.sop_class_uid,
        "SOPInstanceUID": inst.sop_instance_uid,
        "InstanceNumber": inst.instance_number,
        "NumberOfFrames": inst.number_of_frames,
        "Rows": inst.rows,
        "Columns": inst.columns,
        "AcquisitionDateTime": inst.acquisition_datetime,
        "TransferSyntaxUID": inst.transfer_syntax_uid,
    }
    return {**base, **{k: v for k, v in own.items() if v not in (None, "")}, **(inst.attributes or {})}


def build_study_view(
    session: Session, spool_dir: Path, study_instance_uid: str,
    series_uids: Collection[str] | None = None,
) -> StudyView:
    """The study's acquired series (only ``series_uids`` when given) as a :class:`StudyView`.

    Raises
    ------
    LookupError
        The study is not in the index (deleted by retention meanwhile).
    """
    study = session.scalars(select(Study).where(
        Study.study_instance_uid == study_instance_uid)).first()
    if study is None:
        raise LookupError(f"study {study_instance_uid} is not in the index")
    stmt = select(Series).where(Series.study_fk == study.id, Series.is_result.is_(False))
    if series_uids is not None:
        stmt = stmt.where(Series.series_instance_uid.in_(list(series_uids)))
    views = []
    for series in session.scalars(stmt.order_by(Series.series_number, Series.id)):
        base = _series_attributes(series, study)
        rows = session.scalars(select(Instance).where(Instance.series_fk == series.id)).all()
        rows = sorted(rows, key=lambda i: (i.instance_number is None, i.instance_number or 0,
                                           i.sop_instance_uid))
        instances = tuple(InstanceView(
            sop_instance_uid=i.sop_instance_uid, sop_class_uid=i.sop_class_uid,
            path=spool_dir / i.path, instance_number=i.instance_number,
            number_of_frames=i.number_of_frames, attributes=_instance_attributes(i, base),
        ) for i in rows)
        views.append(SeriesView(
            series_instance_uid=series.series_instance_uid, modality=series.modality,
            instances=instances, series_description=series.series_description,
            body_part_examined=series.body_part_examined,
            image_type=tuple(v.upper() for v in base.get("ImageType", [])),
            series_number=series.series_number,
            attributes=instances[0].attributes if instances else base,
        ))
    study_attrs = {k: v for k, v in {
        "StudyInstanceUID": study.study_instance_uid, "StudyDescription": study.study_description,
        "StudyDate": study.study_date, "StudyTime": study.study_time,
        "AccessionNumber": study.accession_number}.items() if v}
    return StudyView(study_instance_uid=study.study_instance_uid, series=tuple(views),
                     attributes=study_attrs)
