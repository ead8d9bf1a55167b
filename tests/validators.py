"""The DICOM validators the result objects must pass, run as the standard tools and parsed.

- ``dciodvfy FILE`` (dicom3tools): IOD check; lines ``Error - …`` / ``Warning - …``.
- ``dcentvfy FILE…`` (dicom3tools): consistency of patient/study/series attributes
  across the instances of a study; same line format.
- ``dsrdump -v FILE`` (dcmtk): SR parser and checker; lines ``E: …`` / ``W: …``.
- PixelMed ``DicomSRValidator`` (SR and KOS templates): lines ``Error: …`` /
  ``Warning: …``.  It needs the three JDK-17 XPath limit flags (results-notes E5) and
  compiles its XSLT on every start (about 10 s), so :func:`pixelmed_sr` validates
  several files in one JVM through a tiny Java launcher compiled once per session.

Each function returns :class:`Report` (per file for the batched PixelMed run).
Tests assert ``report.errors == []`` and compare warnings against a documented list.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DCIODVFY = "/usr/bin/dciodvfy"
DCENTVFY = "/usr/bin/dcentvfy"
DSRDUMP = "/usr/bin/dsrdump"
PIXELMED_JAR = "/usr/share/java/pixelmed.jar"
#: Without these JDK 17's secure-processing limits abort PixelMed's XSLT (results-notes E5).
JDK17_FLAGS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)


@dataclass
class Report:
    """What one validator said about one file (or one study for dcentvfy)."""

    tool: str
    target: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""

    def unexpected_warnings(self, known: Iterable[str]) -> list[str]:
        """Warnings matching none of the ``known`` regular expressions."""
        patterns = [re.compile(k) for k in known]
        return [w for w in self.warnings if not any(p.search(w) for p in patterns)]

    def __str__(self) -> str:
        return f"{self.tool} {self.target}: {len(self.errors)} E / {len(self.warnings)} W\n{self.output}"


def _run(cmd: Sequence[str], timeout: float = 300) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    return res.stdout + res.stderr


def _dicom3tools(tool: str, output: str, target: str) -> Report:
    report = Report(tool, target, output=output)
    for line in output.splitlines():
        text = line.strip()
        if text.startswith("Error"):
            report.errors.append(text)
        elif text.startswith("Warning"):
            report.warnings.append(text)
    return report


def dciodvfy(path: str | Path) -> Report:
    """IOD conformance of one file."""
    return _dicom3tools("dciodvfy", _run([DCIODVFY, str(path)]), str(path))


def dcentvfy(paths: Iterable[str | Path]) -> Report:
    """Entity consistency across the files of a study (sources and results together)."""
    files = [str(p) for p in paths]
    return _dicom3tools("dcentvfy", _run([DCENTVFY, *files]), f"{len(files)} files")


def dsrdump(path: str | Path) -> Report:
    """dcmtk's SR checker (``dsrdump -v``): ``E:`` lines are errors, ``W:`` warnings."""
    output = _run([DSRDUMP, "-v", str(path)])
    report = Report("dsrdump", str(path), output=output)
    for line in output.splitlines():
        if line.startswith("E:"):
            report.errors.append(line)
        elif line.startswith("W:"):
            report.warnings.append(line)
    return report


# ---------------------------------------------------------------------------
# PixelMed, several files per JVM
# ---------------------------------------------------------------------------

_LAUNCHER = """
import com.pixelmed.validate.DicomSRValidator;
public class BatchSRValidator {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String file : args) {
            System.out.println("=== FILE " + file);
            try {
                System.out.print(validator.validate(file));
            } catch (Exception e) {
                System.out.println("Error: exception " + e);
            }
            System.out.println("=== END");
        }
    }
}
"""


def _launcher_dir() -> Path | None:
    """Compile the batch launcher once (needs ``javac``); None without a JDK."""
    javac = shutil.which("javac")
    if javac is None:
        return None
    cache = Path(tempfile.gettempdir()) / f"dicomnode-pixelmed-{os.getuid()}"
    if (cache / "BatchSRValidator.class").exists():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "BatchSRValidator.java").write_text(_LAUNCHER)
    subprocess.run([javac, "-cp", PIXELMED_JAR, "-d", str(cache), str(cache / "BatchSRValidator.java")],
                   check=True, capture_output=True, timeout=120)
    return cache


def _pixelmed_report(path: str, output: str) -> Report:
    report = Report("DicomSRValidator", path, output=output)
    for line in output.splitlines():
        text = line.strip()
        if text.startswith("Error"):
            report.errors.append(text)
        elif text.startswith("Warning"):
            report.warnings.append(text)
    return report


def pixelmed_sr(paths: Iterable[str | Path]) -> dict[str, Report]:
    """PixelMed ``DicomSRValidator`` on SR and KOS files, one JVM for all of them."""
    files = [str(p) for p in paths]
    java = shutil.which("java") or "/usr/bin/java"
    launcher = _launcher_dir()
    if launcher is None:
        # JRE only: one JVM per file with PixelMed's own main (slow but equivalent).
        return {f: _pixelmed_report(f, _run([java, *JDK17_FLAGS, "-cp", PIXELMED_JAR,
                                             "com.pixelmed.validate.DicomSRValidator", f]))
                for f in files}
    output = _run([java, *JDK17_FLAGS, "-cp", f"{PIXELMED_JAR}:{launcher}", "BatchSRValidator",
                   *files], timeout=600)
    reports: dict[str, Report] = {}
    for chunk in output.split("=== FILE ")[1:]:
        name, _, rest = chunk.partition("\n")
        body = rest.split("=== END")[0]
        reports[name.strip()] = _pixelmed_report(name.strip(), body)
    missing = [f for f in files if f not in reports]
    if missing:
        raise RuntimeError(f"PixelMed gave no report for {missing}:\n{output[-2000:]}")
    return reports
