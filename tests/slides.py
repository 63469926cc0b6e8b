"""Real slide files of several vendor layouts, written with tifffile for the slide-reader tests.

Each writer returns the pixels it stored (level by level) so tests compare what a reader returns
with what is in the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tissue(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Textured RGB content (smooth structures plus noise), uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 150 + 60 * np.sin(yy[..., None] / 13.0 + np.array([0.0, 1.3, 2.6])) * np.cos(xx[..., None] / 9.0)
    return np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)


def halve(image: np.ndarray) -> np.ndarray:
    """2x box reduction (the sizes used here are even), as a scanner writes its pyramid."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    blocks = image[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2, -1)
    return np.floor(blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [image]
    for _ in range(levels - 1):
        out.append(halve(out[-1]))
    return out


def write_svs(
    path: Path,
    image: np.ndarray,
    *,
    levels: int = 3,
    mpp: float | None = 0.25,
    power: float = 40,
    tile: int = 256,
    compression: str | None = None,
) -> list[np.ndarray]:
    """An Aperio-style SVS: tiled baseline with the Aperio ImageDescription (AppMag, MPP), a
    stripped thumbnail as the second page, then the reduced levels (what OpenSlide's aperio
    driver and tifffile's SVS series expect)."""
    import tifffile

    stack = pyramid(image, levels)
    h, w = image.shape[:2]
    desc = f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) RGB|AppMag = {power:g}"
    if mpp is not None:
        desc += f"|MPP = {mpp:g}"
    args = {"photometric": "rgb", "compression": compression, "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(stack[0], tile=(tile, tile), description=desc, **args)
        tw.write(stack[-1][:64, :64], description="Aperio Image Library thumbnail 64x64", **args)
        for level in stack[1:]:
            tw.write(level, tile=(tile, tile), description="Aperio Image Library level", **args)
    return stack


def write_generic_pyramid(
    path: Path, image: np.ndarray, *, levels: int = 3, tile: int = 128, dpcm: float | None = 20000.0
) -> list[np.ndarray]:
    """A generic tiled pyramidal TIFF: reduced levels in the main IFD chain (NewSubfileType 1)
    with resolution tags in pixels per centimetre on every level."""
    import tifffile

    stack = pyramid(image, levels)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, level in enumerate(stack):
            extra = {}
            if dpcm is not None:
                extra = {"resolution": (dpcm / 2**k, dpcm / 2**k), "resolutionunit": "CENTIMETER"}
            tw.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if k else 0,
                metadata=None,
                **extra,
            )
    return stack


def write_ome(
    path: Path, image: np.ndarray, *, levels: int = 3, mpp: float = 0.5, tile: int = 128
) -> list[np.ndarray]:
    """A pyramidal OME-TIFF (reduced levels as SubIFDs, PhysicalSizeX/Y in um) followed by a
    second series (a small label image), as slide converters write them."""
    import tifffile

    stack = pyramid(image, levels)
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": mpp,
        "PhysicalSizeY": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(
            stack[0],
            subifds=levels - 1,
            tile=(tile, tile),
            photometric="rgb",
            compression="zlib",
            metadata=meta,
        )
        for level in stack[1:]:
            tw.write(level, subfiletype=1, tile=(tile, tile), photometric="rgb", compression="zlib")
        label = tissue(48, 64, seed=9)
        tw.write(label, photometric="rgb", metadata={"axes": "YXS", "Name": "label"})
    return stack


#: Hamamatsu's private tags that OpenSlide's NDPI driver requires: format flag, source lens
#: (objective power), slide offsets in nm, focal plane.
def _ndpi_tags(power: float) -> list[tuple]:
    return [
        (65420, "I", 1, 1, False),
        (65421, "f", 1, power, False),
        (65422, "i", 1, 0, False),
        (65423, "i", 1, 0, False),
        (65424, "i", 1, 0, False),
    ]


def write_ndpi_like(
    path: Path, image: np.ndarray, *, mpp: float = 0.46, power: float = 20, ndpi: bool = True
) -> None:
    """An NDPI-like file: every level one JPEG strip with the resolution in pixels per cm and
    Hamamatsu's tags. tifffile reads a real NDPI's 64-bit offset extension, which tifffile's
    writer does not write, so it refuses this file and the automatic choice goes to OpenSlide;
    ``ndpi=False`` writes the same JPEG data without the tags (a plain TIFF tifffile reads)."""
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for k, level in enumerate([image, halve(image)]):
            dpcm = 1e4 / (mpp * 2**k)
            tw.write(
                level,
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 95},
                rowsperstrip=level.shape[0],
                resolution=(dpcm, dpcm),
                resolutionunit="CENTIMETER",
                extratags=_ndpi_tags(power) if ndpi else (),
                metadata=None,
            )


def write_dicom_wsi(path: Path, image: np.ndarray, *, tile: int = 256, mpp: float = 0.25) -> None:
    """A one-level DICOM WSI (VL Whole Slide Microscopy Image, TILED_FULL, uncompressed RGB
    frames, PixelSpacing in mm) written with pydicom: the attributes OpenSlide's DICOM driver
    needs. The image's sides must be multiples of ``tile``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    h, w = image.shape[:2]
    assert h % tile == 0 and w % tile == 0
    frames = [image[r : r + tile, c : c + tile] for r in range(0, h, tile) for c in range(0, w, tile)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.Modality, ds.ImageType = "SM", ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.ContainerIdentifier, ds.PatientID, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = (
        "slide",
        "p",
        "s",
        1,
        1,
    )
    ds.Manufacturer = "dnrt tests"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = w, h, 1
    path_item = Dataset()
    path_item.OpticalPathIdentifier = "1"
    ds.NumberOfOpticalPaths, ds.OpticalPathSequence = 1, Sequence([path_item])
    ds.Rows, ds.Columns, ds.NumberOfFrames = tile, tile, len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * mpp / 1000, h * mpp / 1000
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [mpp / 1000, mpp / 1000], 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = b"".join(np.ascontiguousarray(f).tobytes() for f in frames)
    ds.save_as(path, enforce_file_format=True)
