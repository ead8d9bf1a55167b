"""The one code table of the project: every coded concept a module or a result object uses.

Standard codes come first (DICOM ``DCM``, SNOMED CT ``SCT``, LOINC ``LN``, RadLex ``RADLEX``,
UCUM), checked against pydicom 3.0's concept dictionary (``pydicom.sr._concepts_dict``);
the private scheme ``99DICOMNODE`` covers what no standard names (mTICI, keyframes, some
image properties, spine grades).  ``results-notes.md`` §4 is the source of each choice.

Rules for the private scheme (PS3.3 §8.2 local coding schemes):

- the designator begins with ``99`` and fits VR SH (≤ 16 characters);
- code values are uppercase, ≤ 16 characters (longer values would need LongCodeValue,
  which OHIF and Stone ignore), meanings ≤ 64 characters (:class:`~ai.core.contract.Code`
  checks both);
- a value, once released, keeps its meaning forever: bump
  :data:`PRIVATE_SCHEME_VERSION` and add a new value rather than reuse one.

Every object that uses a private code declares the scheme in its Coding Scheme
Identification Sequence (0008,0110) from :data:`PRIVATE_SCHEME`.

Nothing here imports torch or pydicom: modules, routing and results all read it.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ai.core.contract import Code

# ---------------------------------------------------------------------------
# The private coding scheme and its declaration.
# ---------------------------------------------------------------------------

PRIVATE = "99DICOMNODE"
PRIVATE_SCHEME_VERSION = "1"


@dataclass(frozen=True)
class CodingScheme:
    """What an object's Coding Scheme Identification Sequence item says about a scheme."""

    designator: str
    name: str
    version: str
    responsible_organization: str


PRIVATE_SCHEME = CodingScheme(
    designator=PRIVATE,
    name="dicomnode private codes",
    version=PRIVATE_SCHEME_VERSION,
    responsible_organization="dicomnode project",
)


def _p(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE, meaning)


# ---------------------------------------------------------------------------
# Units (UCUM).
# ---------------------------------------------------------------------------

PERCENT = Code("%", "UCUM", "%")
#: A frame number: the UCUM annotation ``{frame}`` equals 1; validators accept it.
FRAME = Code("{frame}", "UCUM", "frame")
NO_UNITS = Code("1", "UCUM", "no units")
MILLIMETER = Code("mm", "UCUM", "mm")
SECOND = Code("s", "UCUM", "s")

# ---------------------------------------------------------------------------
# Document structure (TID 1500, TID 1501, TID 1410, TID 4019, TID 2010).
# ---------------------------------------------------------------------------

IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")  # CID 7021
#: TID 2000 root of the node's summary SR (image-level findings in words); the meaning
#: as CID 7000 spells it (PixelMed warns on any other).
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic Imaging Report")
FINDINGS = Code("121070", "DCM", "Findings")  # CID 7001 section heading
DEVICE = Code("121007", "DCM", "Device")  # CID 270, observer type
MEASUREMENT_GROUP = Code("125007", "DCM", "Measurement Group")
FINDING = Code("121071", "DCM", "Finding")
FINDING_SITE = Code("363698007", "SCT", "Finding Site")
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")  # CID 6048, in %
PROBABILITY = Code("122157", "DCM", "Probability")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")
#: A group's readable text: OHIF 3.13 prints a TEXT of this concept as an SR label's first line.
COMMENT = Code("121106", "DCM", "Comment")
IMAGE_REGION = Code("111030", "DCM", "Image Region")
#: Stone Web Viewer draws a SCOORD only when its source image item has this concept name.
ORIGINAL_SOURCE = Code("111040", "DCM", "Original Source")
GEOMETRIC_PURPOSE_OF_REGION = Code("130400", "DCM", "Geometric purpose of region")
CENTER = Code("111010", "DCM", "Center")  # CID 219
OF_INTEREST = Code("113000", "DCM", "Of Interest")  # CID 7010, KOS title
BEST_IN_SET = Code("113013", "DCM", "Best In Set")  # CID 7010
KEY_OBJECT_DESCRIPTION = Code("113012", "DCM", "Key Object Description")
#: Secondary Capture: Purpose of Reference of the source image (CID 7202).
SOURCE_IMAGE_FOR_PROCESSING = Code(
    "121322", "DCM", "Source image for image processing operation"
)
#: Secondary Capture: Derivation Code (CID 7203); no "AI rendering" concept exists.
DERIVATION_SEGMENTATION = Code("113076", "DCM", "Segmentation")

# ---------------------------------------------------------------------------
# Procedure reported (CID 100): exactly one per SR.
# ---------------------------------------------------------------------------

#: PixelMed 2022's CID 100 lacks Angiography (77343006) and XR unspecified (43468-8),
#: both in the current standard: "Imaging procedure" passes every validator (E3).
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
ANGIOGRAPHY = Code("77343006", "SCT", "Angiography")
MRI_UNSPECIFIED_BODY_REGION = Code("25056-3", "LN", "MRI unspecified body region")

#: Procedure Reported by the Modality of the reported images; anything else → IMAGING_PROCEDURE.
PROCEDURE_BY_MODALITY: Mapping[str, Code] = {
    "XA": IMAGING_PROCEDURE,
    "MR": MRI_UNSPECIFIED_BODY_REGION,
}

# ---------------------------------------------------------------------------
# Common values.
# ---------------------------------------------------------------------------

PRESENT = Code("52101004", "SCT", "Present")  # CID 240
ABSENT = Code("272519000", "SCT", "Absent")  # CID 240
YES = Code("373066001", "SCT", "Yes")  # CID 230
NO = Code("373067005", "SCT", "No")  # CID 230
NORMAL = Code("17621005", "SCT", "Normal")
ABNORMAL = Code("263654008", "SCT", "Abnormal")
MILD = Code("255604002", "SCT", "Mild")  # CID 3716
MODERATE = Code("6736007", "SCT", "Moderate")
SEVERE = Code("24484000", "SCT", "Severe")
COMPLETE = Code("255594003", "SCT", "Complete")

# Anatomy.
SKULL = Code("89546000", "SCT", "Skull")
CEREBRAL_ARTERY = Code("88556005", "SCT", "Cerebral artery")
MIDDLE_CEREBRAL_ARTERY = Code("17232002", "SCT", "Middle Cerebral Artery")
INTERNAL_CAROTID_ARTERY = Code("86117002", "SCT", "Internal carotid artery")
CORONARY_ARTERY = Code("41801008", "SCT", "Coronary artery")
LEFT_CORONARY_ARTERY = Code("50018008", "SCT", "Left Coronary Artery")
RIGHT_CORONARY_ARTERY = Code("13647002", "SCT", "Right Coronary Artery")
LUMBAR_SPINE = Code("122496007", "SCT", "Lumbar spine")


@dataclass(frozen=True)
class LabelSchema:
    """One classifier output: the property (concept), its classes (values) and its anatomy.

    ``values`` maps the module's class name (as in its config and training data) to the
    code written as the SR's qualitative evaluation value.
    """

    concept: Code
    values: Mapping[str, Code]
    finding_site: Code | None = None
    description: str = ""

    def value(self, name: str) -> Code:
        """The code of class ``name``; ``KeyError`` names the label and the known classes."""
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(
                f"{self.concept.meaning}: no class {name!r} (known: {', '.join(self.values)})"
            ) from None


# ---------------------------------------------------------------------------
# quality: DSA image properties (CLAIRE-DSA style), results-notes §4.2.
# ---------------------------------------------------------------------------

IMAGE_QUALITY = Code("111101", "DCM", "Image Quality")
DIAGNOSTIC_QUALITY = Code("RID12", "RADLEX", "Diagnostic quality")  # CID 7036
LIMITED_QUALITY = Code("RID13", "RADLEX", "Limited quality")
NON_DIAGNOSTIC_QUALITY = Code("RID14", "RADLEX", "Non-diagnostic quality")
MOTION_BLUR = Code("111210", "DCM", "Motion blur")  # CID 6135
ANTERO_POSTERIOR = Code("399348003", "SCT", "antero-posterior")  # CID 4010
POSTERO_ANTERIOR = Code("272479007", "SCT", "postero-anterior")
LATERAL = Code("399067008", "SCT", "lateral")
LEFT_LATERAL = Code("399173006", "SCT", "left lateral")
RIGHT_LATERAL = Code("399198007", "SCT", "right lateral")

DSA_CONTRAST = _p("DSA-CONTRAST", "Contrast medium visible")
DSA_PROJECTION = _p("DSA-PROJ", "Projection")
DSA_OBLIQUE = _p("DSA-PROJ-OBL", "Oblique projection")
DSA_SKULL_IN_FIELD = _p("DSA-SKULL", "Skull in field of view")
DSA_TRUNCATED = _p("DSA-TRUNCATED", "Truncated")
DSA_SHUTTER = _p("DSA-SHUTTER", "Collimator shutter visible")
DSA_DEVICE = _p("DSA-DEVICE", "Device or coil visible")
DSA_TEXT = _p("DSA-TEXT", "Burned-in text visible")
DSA_NOISE = _p("DSA-NOISE", "Image noise")
DSA_RUN_TRUNCATED = _p("DSA-RUN-TRUNC", "Run truncated")
DSA_SUITABLE = _p("DSA-SUITABLE", "Suitable for downstream AI")

#: The quality module's label schema by label name; the paper's nine labels are only
#: partly public, so a site adds its own here (DSA-<LABEL ≤ 12>) rather than in a module.
QUALITY_LABELS: Mapping[str, LabelSchema] = {
    "contrast": LabelSchema(DSA_CONTRAST, {"present": PRESENT, "absent": ABSENT}),
    "projection": LabelSchema(
        DSA_PROJECTION,
        {"ap": ANTERO_POSTERIOR, "lateral": LATERAL, "oblique": DSA_OBLIQUE},
    ),
    "skull": LabelSchema(
        DSA_SKULL_IN_FIELD, {"complete": COMPLETE, "truncated": DSA_TRUNCATED}, SKULL
    ),
    "motion": LabelSchema(
        MOTION_BLUR, {"none": ABSENT, "mild": MILD, "moderate": MODERATE, "severe": SEVERE}
    ),
    "shutter": LabelSchema(DSA_SHUTTER, {"present": PRESENT, "absent": ABSENT}),
    "device": LabelSchema(DSA_DEVICE, {"present": PRESENT, "absent": ABSENT}),
    "text": LabelSchema(DSA_TEXT, {"present": PRESENT, "absent": ABSENT}),
    "noise": LabelSchema(DSA_NOISE, {"mild": MILD, "moderate": MODERATE, "severe": SEVERE}),
    "run_truncated": LabelSchema(DSA_RUN_TRUNCATED, {"yes": YES, "no": NO}),
    "quality": LabelSchema(
        IMAGE_QUALITY,
        {
            "diagnostic": DIAGNOSTIC_QUALITY,
            "limited": LIMITED_QUALITY,
            "non_diagnostic": NON_DIAGNOSTIC_QUALITY,
        },
    ),
    "suitable": LabelSchema(DSA_SUITABLE, {"yes": YES, "no": NO}),
}

# ---------------------------------------------------------------------------
# mtici: reperfusion grade (no standard code; SNOMED's TIMI grades are coronary), §4.3.
# ---------------------------------------------------------------------------

MTICI = _p("MTICI", "mTICI reperfusion grade")
MTICI_0 = _p("MTICI-0", "mTICI 0")
MTICI_1 = _p("MTICI-1", "mTICI 1")
#: The default 4-class head fuses grades 0 and 1 (CVFSNet ``fuse01``).
MTICI_0_1 = _p("MTICI-0-1", "mTICI 0/1")
MTICI_2A = _p("MTICI-2A", "mTICI 2a")
MTICI_2B = _p("MTICI-2B", "mTICI 2b")
MTICI_2C = _p("MTICI-2C", "mTICI 2c")
MTICI_3 = _p("MTICI-3", "mTICI 3")
SUCCESSFUL_REPERFUSION = _p("MTICI-SUCCESS", "Successful reperfusion (mTICI >= 2b)")

MTICI_GRADES = LabelSchema(
    MTICI,
    {
        "0": MTICI_0,
        "1": MTICI_1,
        "0/1": MTICI_0_1,
        "2a": MTICI_2A,
        "2b": MTICI_2B,
        "2c": MTICI_2C,
        "3": MTICI_3,
    },
    CEREBRAL_ARTERY,
)
MTICI_SUCCESS = LabelSchema(SUCCESSFUL_REPERFUSION, {"yes": YES, "no": NO}, CEREBRAL_ARTERY)

# ---------------------------------------------------------------------------
# keyframes: start / apex / end frame numbers of an angiographic run, §4.4.
# ---------------------------------------------------------------------------

#: results-notes names it "DSA key frames"; the module reads coronary cine too, hence "XA".
KEYFRAMES = _p("XA-KEYFRAMES", "Angiography key frames")
KEYFRAME_START = _p("KF-START", "Key frame: contrast start")
KEYFRAME_APEX = _p("KF-APEX", "Key frame: peak arterial opacification")
KEYFRAME_END = _p("KF-END", "Key frame: contrast end")
KEYFRAME_CONCEPTS: Mapping[str, Code] = {
    "start": KEYFRAME_START,
    "apex": KEYFRAME_APEX,
    "end": KEYFRAME_END,
}

# ---------------------------------------------------------------------------
# spine: lumbar landmarks and grades (Tianchi / CCF-Net), §4.5.
# ---------------------------------------------------------------------------

#: CID 7602/7603 vertebrae.
VERTEBRAE: Mapping[str, Code] = {
    "T12": Code("23215003", "SCT", "T12 vertebra"),
    "L1": Code("66794005", "SCT", "L1 vertebra"),
    "L2": Code("14293000", "SCT", "L2 vertebra"),
    "L3": Code("36470004", "SCT", "L3 vertebra"),
    "L4": Code("11994002", "SCT", "L4 vertebra"),
    "L5": Code("49668003", "SCT", "L5 vertebra"),
    "S": Code("54735007", "SCT", "Sacrum"),
}
#: CID 7604 intervertebral discs (L5/S1 is 715056000 in CID 7604, not 75782005).
DISCS: Mapping[str, Code] = {
    "T12-L1": Code("76206002", "SCT", "T12/L1 disc"),
    "L1-L2": Code("80064006", "SCT", "L1/L2 disc"),
    "L2-L3": Code("67459009", "SCT", "L2/L3 disc"),
    "L3-L4": Code("62551000", "SCT", "L3/L4 disc"),
    "L4-L5": Code("84020006", "SCT", "L4/L5 disc"),
    "L5-S1": Code("715056000", "SCT", "L5/S1 disc"),
}

VERTEBRA_CLASS = _p("VERT-CLASS", "Vertebra classification")
DISC_CLASS = _p("DISC-CLASS", "Disc classification (Tianchi v1-v5)")
#: Tianchi tags as the spine spec (modules.md) defines them; discs may carry several.
VERTEBRA_GRADES = LabelSchema(
    VERTEBRA_CLASS,
    {"v1": _p("VERT-V1", "v1 normal"), "v2": _p("VERT-V2", "v2 degeneration")},
)
DISC_GRADES = LabelSchema(
    DISC_CLASS,
    {
        "v1": _p("DISC-V1", "v1 normal"),
        "v2": _p("DISC-V2", "v2 bulge"),
        "v3": _p("DISC-V3", "v3 protrusion"),
        "v4": _p("DISC-V4", "v4 extrusion"),
        "v5": _p("DISC-V5", "v5 Schmorl's node"),
    },
)
PFIRRMANN = _p("PFIRRMANN", "Pfirrmann grade")
PFIRRMANN_GRADES = LabelSchema(
    PFIRRMANN,
    {str(i): _p(f"PFIRRMANN-{i}", f"Pfirrmann grade {r}") for i, r in
     enumerate(("I", "II", "III", "IV", "V"), start=1)},
)


# ---------------------------------------------------------------------------
# Introspection (tests check lengths and uniqueness; the SR declares what it uses).
# ---------------------------------------------------------------------------


def all_codes() -> Iterator[Code]:
    """Every :class:`Code` this module defines, once each (constants, mappings, schemas)."""
    seen: set[Code] = set()
    for value in list(globals().values()):
        items: list[Code] = []
        if isinstance(value, Code):
            items = [value]
        elif isinstance(value, LabelSchema):
            items = [value.concept, *value.values.values()]
            if value.finding_site is not None:
                items.append(value.finding_site)
        elif isinstance(value, Mapping):
            for item in value.values():
                if isinstance(item, Code):
                    items.append(item)
                elif isinstance(item, LabelSchema):
                    items.extend([item.concept, *item.values.values()])
        for code in items:
            if code not in seen:
                seen.add(code)
                yield code


def is_private(code: Code) -> bool:
    """True for codes of the local ``99…`` schemes that an object must declare."""
    return code.scheme.startswith("99")
