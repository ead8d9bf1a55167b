"""Rules files: every error names its line and reason; conditions mean what the docs say."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import free_port

from dicomnode.errors import ConfigError
from dicomnode.routing.conditions import ConditionError, parse_conditions
from dicomnode.routing.facts import SERIES_ATTRIBUTES, orientation, xa_view
from dicomnode.routing.rules import load_rules

INSTALLED = ("quality", "mtici", "keyframes", "spine")

GOOD = """\
[[rules]]
name = "xa"
modules = ["quality"]
[rules.match]
modality = "XA"
"""

# (rules file, line the error must name, words the reason must contain)
BAD_FILES = [
    (GOOD + 'number_of_frames = { minimum = 2 }\n', 6, "unknown operator"),
    (GOOD + 'series_description = { regex = "(unclosed" }\n', 6, "invalid regular expression"),
    (GOOD + 'colour = "red"\n', 6, "unknown attribute 'colour'"),
    (GOOD + 'number_of_frames = { min = 9, max = 2 }\n', 6, "min 9 is greater than max 2"),
    (GOOD + 'image_type = { contains_any = [] }\n', 6, "non-empty list"),
    (GOOD.replace('modules = ["quality"]\n', ""), 1, "modules must be a non-empty list"),
    (GOOD.replace('modules = ["quality"]', 'modules = ["qualty"]'), 1,
     "module 'qualty' is not installed"),
    (GOOD.replace('name = "xa"', 'name = "xa"\nlevel = "patient"'), 3, "level must be"),
    (GOOD.replace('name = "xa"', 'name = "xa"\nmodule = ["x"]'), 3, "unknown key 'module'"),
    (GOOD + '[[rules.requires]]\nrule = "xa"\n', 6, "only study rules"),
    (GOOD + GOOD, 6, "name already used on line 1"),
    (GOOD.replace('name = "xa"', 'name = "xa"\ndestinations = ["nowhere"]'), 1,
     "unknown destination 'nowhere'"),
    (GOOD + '\n[[rules]]\nname = "st"\nlevel = "study"\nmodules = ["mtici"]\n'
     '[[rules.requires]]\nrule = "nope"\n', 7, "names 'nope', which is not a series rule"),
    (GOOD + 'modality = \n', 6, "Invalid value"),  # TOML syntax: tomllib's own line report
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD_FILES,
                         ids=[r for _, _, r in BAD_FILES])
def test_a_bad_rules_file_is_refused_with_its_line_and_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_rules(path, INSTALLED, destinations=("pacs",))
    message = str(err.value)
    assert str(path) in message
    assert f"line {line}" in message, message
    assert reason in message, message


def test_the_shipped_defaults_route_each_acquisition_type_to_its_module() -> None:
    rules = load_rules(None, INSTALLED)
    assert {r.name: (r.level, r.modules) for r in rules.rules} == {
        "dsa-head-quality": ("series", ("quality",)),
        "dsa-head-mtici": ("study", ("mtici",)),
        "coronary-cine-keyframes": ("series", ("keyframes",)),
        "lumbar-spine-sagittal": ("series", ("spine",)),
    }
    assert rules.sources == ("defaults.toml",)


def test_defaults_naming_a_module_that_is_not_installed_keep_the_rule_without_it() -> None:
    rules = load_rules(None, installed=("quality",))
    mtici = rules.get("dsa-head-mtici")
    assert mtici.modules == () and mtici.missing_modules == ("mtici",)
    assert rules.get("dsa-head-quality").modules == ("quality",)


def test_a_user_file_replaces_the_defaults_unless_it_includes_them(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(GOOD)
    assert [r.name for r in load_rules(path, INSTALLED).rules] == ["xa"]
    path.write_text("include_defaults = true\n" + GOOD.replace('"xa"', '"dsa-head-quality"'))
    rules = load_rules(path, INSTALLED)
    assert [r.name for r in rules.rules] == [
        "dsa-head-mtici", "coronary-cine-keyframes", "lumbar-spine-sagittal", "dsa-head-quality"]
    assert rules.get("dsa-head-quality").source == str(path)


FACTS = {"modality": "XA", "image_type": ["DERIVED", "PRIMARY", "SUBTRACTION"],
         "number_of_frames": 16, "body_part_examined": "", "series_description": "DSA Head LAT",
         "positioner_primary_angle": -91.5}

# (attribute, spec, holds on FACTS)
CONDITIONS = [
    ("modality", "xa", True),                                   # equality ignores case
    ("modality", {"not_equals": "XA"}, False),
    ("modality", {"in": ["CT", "MR"]}, False),
    ("body_part_examined", {"in": ["HEAD", ""]}, True),          # "" = absent
    ("body_part_examined", {"present": False}, True),
    ("image_type", {"contains": ["DERIVED", "SUBTRACTION"]}, True),
    ("image_type", {"contains": ["ORIGINAL", "SUBTRACTION"]}, False),
    ("image_type", {"contains_any": ["DSA", "subtraction"]}, True),
    ("image_type", {"contains_none": ["SUBTRACTION"]}, False),
    ("image_type", {"in": ["SUBTRACTION"]}, False),               # multi-valued: use contains_any
    ("number_of_frames", {"min": 2}, True),
    ("number_of_frames", {"min": 2, "max": 10}, False),
    ("positioner_primary_angle", {"max": -45}, True),
    ("series_description", {"regex": r"\blat"}, True),
    ("series_description", {"regex": r"^ap\b"}, False),
    ("series_description", {"contains": "head"}, True),           # substring on text
    ("view_position", {"min": 1}, False),                          # absent is never in range
]


@pytest.mark.parametrize(("attribute", "spec", "holds"), CONDITIONS,
                         ids=[f"{a}-{s}" for a, s, _ in CONDITIONS])
def test_conditions_hold_as_documented(attribute: str, spec: object, holds: bool) -> None:
    conds = parse_conditions(attribute, spec, SERIES_ATTRIBUTES)
    assert all(c.test(FACTS)[0] for c in conds) is holds


def test_a_failed_condition_says_what_it_saw() -> None:
    (cond,) = parse_conditions("modality", {"in": ["CT", "MR"]}, SERIES_ATTRIBUTES)
    assert cond.describe() == "modality in [CT, MR]"
    assert cond.test(FACTS) == (False, "'XA'")
    with pytest.raises(ConditionError, match="unknown attribute 'Modality'"):
        parse_conditions("Modality", "XA", SERIES_ATTRIBUTES)


@pytest.mark.parametrize(("iop", "plane"), [
    ("0\\1\\0\\0\\0\\-1", "SAGITTAL"),
    ("1\\0\\0\\0\\1\\0", "AXIAL"),
    ("1\\0\\0\\0\\0\\-1", "CORONAL"),
    ([0.0, 0.9, -0.436, 0.0, 0.436, 0.9], "SAGITTAL"),   # 26° tilt: still within 0.75
    ([0.7071, 0.7071, 0.0, 0.0, 0.0, -1.0], "OBLIQUE"),
    ("", ""),
])
def test_the_acquisition_plane_comes_from_the_slice_normal(iop: object, plane: str) -> None:
    assert orientation(iop) == plane  # type: ignore[arg-type]


def test_xa_runs_are_frontal_below_45_degrees_and_lateral_from_45() -> None:
    assert [xa_view("XA", a) for a in (0.0, -44.9, 45.0, -90.0)] == [
        "FRONTAL", "FRONTAL", "LATERAL", "LATERAL"]
    assert xa_view("XA", None) == "" and xa_view("MR", 0.0) == ""


def test_route_check_exits_3_naming_the_line_of_a_bad_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(textwrap.dedent(GOOD) + 'number_of_frames = { more_than = 2 }\n')
    res = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli.main", "route", "check", "--rules", str(path),
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "500"})  # rich wraps at the terminal width
    assert res.returncode == 3, res.stderr
    assert (f"{path}, line 6: rule 'xa': match.number_of_frames.more_than: unknown operator"
            in res.stderr), res.stderr


def test_the_node_refuses_to_start_with_a_bad_rules_file_naming_the_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(GOOD + 'series_description = { regex = "[" }\n')
    config = tmp_path / "node.toml"
    config.write_text(f'[routing]\nrules_file = "{rules}"\n')
    res = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli.main", "run", "--config", str(config),
         "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--bind", "127.0.0.1"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "500"})
    # Exit 3 (configuration error) once `run` maps ConfigError like `settings_from` does.
    assert res.returncode != 0
    assert f"{rules}, line 6: rule 'xa': match.series_description.regex: invalid regular " \
           "expression" in res.stderr, res.stderr
    assert not (tmp_path / "data" / "index.sqlite").exists()  # refused before opening anything
