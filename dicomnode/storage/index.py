"""Plain query functions over the index models.

Writes that several associations may do at once (a new patient, study or series)
use ``INSERT … ON CONFLICT DO NOTHING`` and then read the row back, so two
receivers racing on PostgreSQL never fail on the unique constraint.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicomnode.storage.models import Base, Instance, Patient, Series, Study

M = TypeVar("M", bound=Base)


def get_or_create(
    session: Session, model: type[M], keys: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[M, bool]:
    """Return the row of ``model`` matching ``keys``, inserting it with ``defaults`` if absent.

    Returns
    -------
    (row, created)
    """
    stmt = select(model).filter_by(**keys)
    row = session.scalars(stmt).first()
    if row is not None:
        return row, False
    table = cast(Table, model.__table__)
    created = insert_absent(session, table, {**defaults, **keys}) is not None
    row = session.scalars(stmt).one()
    return row, created


def insert_absent(executor: Session | Connection, table: Table, values: Mapping[str, Any]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the new row's id, None if it existed.

    Two nodes racing on PostgreSQL never fail on the unique key.  (``rowcount`` cannot
    tell: with PostgreSQL's implicit RETURNING it is -1 whether a row was inserted or not.)
    """
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    stmt = postgresql.insert(table) if bind.dialect.name == "postgresql" else sqlite.insert(table)
    return executor.execute(stmt.on_conflict_do_nothing().returning(table.c.id), dict(values)).scalar()


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    """The instance row for a SOP Instance UID, or None."""
    return session.scalars(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
    ).first()


@dataclass(frozen=True)
class StudySummary:
    """One row of ``dicomnode studies list``."""

    study_instance_uid: str
    study_date: str
    study_description: str
    modalities: list[str]
    series: int
    instances: int
    bytes: int
    state: str
    last_received_at: dt.datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "study_date": self.study_date,
            "study_description": self.study_description,
            "modalities": self.modalities,
            "series_count": self.series,
            "instance_count": self.instances,
            "bytes": self.bytes,
            "state": self.state,
            "last_received_at": self.last_received_at.isoformat(),
        }


def list_studies(session: Session, limit: int = 100) -> list[StudySummary]:
    """Most recently received studies first, with series/instance counts."""
    counts = (
        select(
            Series.study_fk,
            func.count(func.distinct(Series.id)).label("n_series"),
            func.count(Instance.id).label("n_inst"),
            func.coalesce(func.sum(Instance.size), 0).label("n_bytes"),
        )
        .join(Instance, Instance.series_fk == Series.id, isouter=True)
        .group_by(Series.study_fk)
        .subquery()
    )
    rows = session.execute(
        select(Study, counts.c.n_series, counts.c.n_inst, counts.c.n_bytes)
        .join(counts, counts.c.study_fk == Study.id, isouter=True)
        .order_by(Study.last_received_at.desc())
        .limit(limit)
    ).all()
    out = []
    for study, n_series, n_inst, n_bytes in rows:
        modalities = sorted(
            set(session.scalars(select(Series.modality).where(Series.study_fk == study.id)))
        )
        out.append(
            StudySummary(
                study_instance_uid=study.study_instance_uid,
                study_date=study.study_date,
                study_description=study.study_description,
                modalities=modalities,
                series=int(n_series or 0),
                instances=int(n_inst or 0),
                bytes=int(n_bytes or 0),
                state=study.state,
                last_received_at=study.last_received_at,
            )
        )
    return out


def study_detail(session: Session, study_instance_uid: str) -> dict[str, Any] | None:
    """Everything ``dicomnode studies show`` prints: study, series, instance counts."""
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid)
    ).first()
    if study is None:
        return None
    patient = session.get(Patient, study.patient_fk)
    series_out = []
    for series in sorted(study.series, key=lambda s: (s.series_number or 0, s.id)):
        n, size = session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0)).where(
                Instance.series_fk == series.id
            )
        ).one()
        series_out.append(
            {
                "series_instance_uid": series.series_instance_uid,
                "series_number": series.series_number,
                "modality": series.modality,
                "series_description": series.series_description,
                "body_part_examined": series.body_part_examined,
                "image_type": series.image_type,
                "instance_count": int(n),
                "bytes": int(size),
                "state": series.state,
                "is_result": series.is_result,
                "calling_ae": series.calling_ae,
            }
        )
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": patient.patient_id if patient else "",
        "study_date": study.study_date,
        "study_description": study.study_description,
        "accession_number": study.accession_number,
        "state": study.state,
        "generation": study.generation,
        "first_received_at": study.first_received_at.isoformat(),
        "last_received_at": study.last_received_at.isoformat(),
        "series": series_out,
    }
