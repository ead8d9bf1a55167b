"""Fixtures for the results tests: node settings, and every kind of result built once."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from results.factories import StudyHeader
from results.scenarios import Scenario, keyframes, mtici, quality, spine

from dicomnode.config import Settings
from dicomnode.results.build import BuildOptions, ResultObject, build_results
from dicomnode.results.sr import is_summary


def make_settings(**sections: dict) -> Settings:
    """Settings from defaults plus the given sections (no file, no environment needed)."""
    return Settings(**sections)


@pytest.fixture
def settings() -> Settings:
    return make_settings(node={"aetitle": "DICOMNODE"},
                         delivery={"retry_backoff_seconds": [1.0, 2.0, 4.0]})


@dataclass
class Built:
    """One scenario's sources and result objects, written as files."""

    scenario: Scenario
    objects: list[ResultObject]
    files: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> path

    def of_kind(self, kind: str) -> list[tuple[ResultObject, Path]]:
        return [(o, self.files[o.sop_instance_uid]) for o in self.objects if o.kind == kind]

    def reports(self) -> list[tuple[ResultObject, Path]]:
        """The TID 1500 SRs (every SR but the summary)."""
        return [(o, p) for o, p in self.of_kind("SR") if not is_summary(o.dataset)]

    def summaries(self) -> list[tuple[ResultObject, Path]]:
        return [(o, p) for o, p in self.of_kind("SR") if is_summary(o.dataset)]

    @property
    def study_instance_uid(self) -> str:
        return str(self.scenario.sources[0].StudyInstanceUID)


def build_and_write(scenario: Scenario, settings: Settings, directory: Path,
                    options: BuildOptions | None = None,
                    predecessor: Dataset | None = None) -> Built:
    scenario.write_sources(directory / "sources")
    objects = build_results(scenario.findings, scenario.images, scenario.paths, settings,
                            predecessor, options=options)
    built = Built(scenario, objects)
    out = directory / "results"
    out.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objects):
        path = out / f"{scenario.name}-{i}-{obj.kind}.dcm"
        obj.dataset.save_as(path, enforce_file_format=True)
        built.files[obj.sop_instance_uid] = path
    return built


@pytest.fixture(scope="module")
def all_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Every module kind built once: quality and mtici share a DSA study; quality again as
    Comprehensive 3D SR in a study of its own; keyframes; spine (with its GSPS).  The
    image-level kinds with their summary SR, except quality3d (the default: none)."""
    settings = make_settings()
    dsa = StudyHeader(study_description="Thrombectomy")
    root = tmp_path_factory.mktemp("results")
    makers: dict[str, Callable[[], tuple[Scenario, BuildOptions]]] = {
        "quality": lambda: (quality(dsa), BuildOptions(summary_sr=True)),
        "mtici": lambda: (mtici(dsa), BuildOptions(summary_sr=True)),
        "quality3d": lambda: (quality(StudyHeader(study_description="DSA")),
                              BuildOptions(sr_storage="comprehensive3d")),
        "keyframes": lambda: (keyframes(), BuildOptions(summary_sr=True)),
        "spine": lambda: (spine(), BuildOptions(gsps=True)),
    }
    out = {}
    for name, make in makers.items():
        scenario, options = make()
        scenario.name = name
        out[name] = build_and_write(scenario, settings, root / name, options)
    return out
