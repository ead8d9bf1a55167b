"""What every result object shares: the node as device and observer, and where the object goes.

:class:`Device` is the node (Device Observer of TID 1004, and the General Equipment
of each object); :class:`Placement` is an object's new series and instance.  Both
expand to the keyword arguments highdicom's SR, SC, KOS and GSPS constructors take,
so the four builders stay consistent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd

from dicomnode.results.codes import codes, concept


@dataclass(frozen=True)
class Device:
    """The node: stable Device Observer UID, AE title as name and serial number."""

    uid: str
    name: str
    manufacturer: str = "dicomnode"
    model_name: str = "dicomnode"
    software_version: str = "dicomnode"

    def observer_context(self) -> hd.sr.ObserverContext:
        """Observer Type = Device, with UID, name, manufacturer and model (TID 1004)."""
        return hd.sr.ObserverContext(
            observer_type=concept(codes.DEVICE),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=self.uid, name=self.name, manufacturer_name=self.manufacturer,
                model_name=self.model_name,
            ),
        )

    def equipment(self) -> dict[str, Any]:
        """General Equipment keyword arguments for highdicom constructors."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.model_name,
            "software_versions": self.software_version,
            "device_serial_number": self.name,
        }


@dataclass(frozen=True)
class Placement:
    """An object's new series and its place in it."""

    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    series_description: str = ""

    def kwargs(self) -> dict[str, Any]:
        """Series and instance keyword arguments for highdicom constructors."""
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "sop_instance_uid": self.sop_instance_uid,
            "instance_number": self.instance_number,
            "series_description": self.series_description or None,
        }
