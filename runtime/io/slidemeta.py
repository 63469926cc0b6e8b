"""What a TIFF output says about its pixels' physical size, in the places slide viewers look.

The writer carries three things from the source into the output:

- the resolution, as TIFF ``XResolution``/``YResolution`` with ``ResolutionUnit`` centimetre
  (an input in inches is converted), which OpenSlide's generic-TIFF driver turns into
  ``openslide.mpp-x``/``-y`` and Bio-Formats into its physical pixel size;
- for a plain TIFF whose pixel size or objective power is known, an Aperio-style
  ``ImageDescription`` (``Aperio Image Library ...|AppMag = 20|MPP = 0.5``), the one place
  OpenSlide (aperio driver), tifffile and QuPath read an objective power from a TIFF;
- for an OME-TIFF, the OME-XML: ``PhysicalSizeX``/``Y`` in micrometres and the objective's
  ``NominalMagnification``.

The OME-XML is built here rather than by tifffile because tifffile's generator has no
``Instrument``/``Objective``; it carries no random UUID so that the same run writes the same bytes.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
#: How the description starts: OpenSlide, tifffile and Bio-Formats recognise Aperio files by it.
APERIO_HEADER = "Aperio Image Library (dnrt)"
_MICRONS_PER_UNIT = {"CENTIMETER": 1e4, 3: 1e4, "INCH": 25400.0, 2: 25400.0}


@dataclass(frozen=True)
class OutputMetadata:
    """The physical metadata of a TIFF output's full-resolution level.

    ``resolution`` is in pixels per ``unit``: ``"CENTIMETER"`` whenever the size is physical,
    ``"NONE"`` for a unitless aspect ratio, None (both) when unknown.
    """

    resolution: tuple[float, float] | None = None
    unit: str | None = None
    objective_power: float | None = None
    icc_profile: bytes | None = None

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel along x and y, or None when the pixel size is not physical."""
        if self.resolution is None or self.unit != "CENTIMETER":
            return None
        return 1e4 / self.resolution[0], 1e4 / self.resolution[1]

    @property
    def is_physical(self) -> bool:
        """Whether there is anything for a slide viewer: a pixel size or an objective power."""
        return self.mpp is not None or self.objective_power is not None


def microns_per_pixel(resolution: Any, unit: Any) -> tuple[float, float] | None:
    """``(x, y)`` microns per pixel from a resolution in pixels per inch or centimetre."""
    if resolution is None:
        return None
    factor = _MICRONS_PER_UNIT.get(unit)
    if factor is None:
        return None
    x, y = float(resolution[0]), float(resolution[1])
    if not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
        return None
    return factor / x, factor / y


def output_metadata(source: Any, channels: int) -> OutputMetadata:
    """What to write for a source (an :class:`~dnrt.runtime.io.reader.ImageSource`, or None)."""
    if source is None:
        return OutputMetadata()
    resolution, unit = source.resolution, source.resolution_unit
    mpp = microns_per_pixel(resolution, unit)
    if mpp is not None:
        resolution, unit = (1e4 / mpp[0], 1e4 / mpp[1]), "CENTIMETER"
    elif resolution is not None:
        resolution, unit = (float(resolution[0]), float(resolution[1])), "NONE"
    else:
        unit = None
    power = getattr(source, "objective_power", None)
    power = float(power) if power is not None and math.isfinite(power) and power > 0 else None
    # An ICC profile describes the colour space of the input's channels; keep it only when the
    # output has the same colour layout (grey profiles do not fit RGB data and vice versa).
    icc = source.icc_profile if (source.icc_profile and source.channels == channels) else None
    return OutputMetadata(resolution, unit, power, icc)


def _number(value: float) -> str:
    return f"{value:.6g}"


def aperio_description(
    width: int,
    height: int,
    tile: int,
    codec: str,
    channels: int,
    meta: OutputMetadata,
    level: tuple[int, int] | None = None,
) -> str:
    """The Aperio-style ``ImageDescription`` of the full-resolution page, or of a reduced page
    ``level = (width, height)`` (which, as in Aperio's files, names its size and no metadata)."""
    if level is not None:
        return f"{APERIO_HEADER}\r\n{width}x{height} -> {level[0]}x{level[1]} - "
    photometric = "RGB" if channels == 3 else "GRAY"
    head = f"{APERIO_HEADER}\r\n{width}x{height} ({tile}x{tile}) {codec.upper()}/{photometric}"
    fields = []
    if meta.objective_power is not None:
        fields.append(f"AppMag = {_number(meta.objective_power)}")
    mpp = meta.mpp
    if mpp is not None:
        # Aperio records one pixel size (square pixels); the TIFF tags keep both axes.
        fields.append(f"MPP = {_number(mpp[0])}")
    return "|".join([head, *fields])


def ome_xml(width: int, height: int, channels: int, meta: OutputMetadata, name: str) -> str:
    """OME-XML (2016-06) for one interleaved uint8 image stored in IFD 0 (levels in its SubIFDs).

    7-bit ASCII, as TIFF requires of ``ImageDescription`` (``µm`` becomes a character reference).
    """
    root = ET.Element(
        "OME",
        {
            "xmlns": OME_NS,
            "xmlns:xsi": _XSI,
            "xsi:schemaLocation": f"{OME_NS} {OME_NS}/ome.xsd",
            "Creator": "dnrt",
        },
    )
    if meta.objective_power is not None:
        instrument = ET.SubElement(root, "Instrument", {"ID": "Instrument:0"})
        ET.SubElement(
            instrument,
            "Objective",
            {"ID": "Objective:0:0", "NominalMagnification": _number(meta.objective_power)},
        )
    image = ET.SubElement(root, "Image", {"ID": "Image:0", "Name": name})
    if meta.objective_power is not None:
        ET.SubElement(image, "InstrumentRef", {"ID": "Instrument:0"})
        ET.SubElement(image, "ObjectiveSettings", {"ID": "Objective:0:0"})
    pixels_attrs = {
        "ID": "Pixels:0",
        "DimensionOrder": "XYCZT",
        "Type": "uint8",
        "SizeX": str(width),
        "SizeY": str(height),
        "SizeC": str(channels),
        "SizeZ": "1",
        "SizeT": "1",
        "Interleaved": "true" if channels > 1 else "false",
    }
    mpp = meta.mpp
    if mpp is not None:
        pixels_attrs.update(
            PhysicalSizeX=_number(mpp[0]),
            PhysicalSizeXUnit="\u00b5m",
            PhysicalSizeY=_number(mpp[1]),
            PhysicalSizeYUnit="\u00b5m",
        )
    pixels = ET.SubElement(image, "Pixels", pixels_attrs)
    ET.SubElement(pixels, "Channel", {"ID": "Channel:0:0", "SamplesPerPixel": str(channels)})
    ET.SubElement(pixels, "TiffData", {"IFD": "0", "PlaneCount": "1"})
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>' + body.encode("ascii", "xmlcharrefreplace").decode(
        "ascii"
    )


__all__ = [
    "APERIO_HEADER",
    "OutputMetadata",
    "aperio_description",
    "microns_per_pixel",
    "ome_xml",
    "output_metadata",
]
