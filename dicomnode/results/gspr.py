"""Grayscale Softcopy Presentation State: the landmark points as graphics on their images.

Weasis and most PACS viewers draw no SR graphics (Weasis issue #309) but do draw
GSPS, so sites that want to *see* landmarks there switch this on
(``BuildOptions(gsps=True)``).  Each point is a POINT graphic with its tracking
identifier as text beside it, in one layer ``AI_RESULTS``.

highdicom derives the Modality and VOI LUTs from the images and fails on classic
sources without the functional groups it looks for (results-notes E12), so both
are passed explicitly, as floats: the source's rescale (identity by default) and
its window, or the full range of BitsStored when it has none.
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ai.core.contract import Finding
from dicomnode.results.device import Device, Placement
from dicomnode.results.sources import SourceIndex

LAYER = "AI_RESULTS"


def _first(value: object, default: float) -> float:
    if value in (None, ""):
        return default
    if isinstance(value, Sequence) and not isinstance(value, str):
        return float(value[0]) if len(value) else default
    return float(value)  # type: ignore[arg-type]


def _luts(ds: Dataset) -> tuple[hd.ModalityLUTTransformation, hd.pr.SoftcopyVOILUTTransformation]:
    modality = hd.ModalityLUTTransformation(
        rescale_intercept=_first(ds.get("RescaleIntercept"), 0.0),
        rescale_slope=_first(ds.get("RescaleSlope"), 1.0),
        rescale_type=str(ds.get("RescaleType") or "US"),
    )
    bits = int(ds.get("BitsStored") or 8)
    voi = hd.pr.SoftcopyVOILUTTransformation(
        window_center=_first(ds.get("WindowCenter"), float(2 ** (bits - 1))),
        window_width=_first(ds.get("WindowWidth"), float(2**bits)),
    )
    return modality, voi


def build_gsps(points: Sequence[Finding], sources: SourceIndex, device: Device,
               placement: Placement) -> Dataset:
    """A GSPS drawing each finding's point (and its tracking identifier) on its image.

    All points must lie on images of one series (a GSPS presents one series).
    """
    if not points or any(f.point is None for f in points):
        raise ValueError("build_gsps: only findings with a point are drawn")
    images = sources.resolve([f.references[0] for f in points])
    series = {str(ds.SeriesInstanceUID) for ds in images}
    if len(series) != 1:
        raise ValueError(f"build_gsps: points lie on {len(series)} series; a GSPS presents one")
    layer = hd.pr.GraphicLayer(LAYER, 1, description="dicomnode AI results")
    annotations = []
    for image in images:
        uid = str(image.SOPInstanceUID)
        on_image = [f for f in points if f.references[0].sop_instance_uid == uid]
        frames = sorted({n for f in on_image for n in f.references[0].frame_numbers})
        graphics, texts = [], []
        for f in on_image:
            assert f.point is not None
            xy = (float(f.point.column), float(f.point.row))
            graphics.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POINT, np.array([xy]),
                                                units=hd.pr.AnnotationUnitsValues.PIXEL))
            texts.append(hd.pr.TextObject(f.tracking_id[:64], units=hd.pr.AnnotationUnitsValues.PIXEL,
                                          anchor_point=(xy[0] + 2.0, xy[1]),
                                          text_justification="LEFT"))
        annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[image], graphic_layer=layer,
            referenced_frame_number=frames or None, graphic_objects=graphics, text_objects=texts,
        ))
    modality_lut, voi_lut = _luts(images[0])
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=images,
        **placement.kwargs(),
        **device.equipment(),
        content_label=LAYER,
        content_description="AI landmarks",
        graphic_layers=[layer],
        graphic_annotations=annotations,
        modality_lut_transformation=modality_lut,
        voi_lut_transformations=[voi_lut],
    )
    # dciodvfy wants Laterality unless BodyPartExamined says the part is unpaired (E8);
    # dcentvfy wants StudyDescription like the rest of the study (W5).
    for keyword in ("BodyPartExamined", "Laterality", "StudyDescription"):
        value = images[0].get(keyword)
        if value not in (None, ""):
            setattr(gsps, keyword, value)
    return gsps
