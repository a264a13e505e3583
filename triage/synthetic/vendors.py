"""Vendor header profiles for synthetic mammograms.

The values are plausible for each vendor's full-field digital mammography systems
(detector matrix, pixel pitch, bit depth, photometric interpretation, VOI style); they
are not copied from any real device's conformance statement. Tests and demos use them
to exercise the ingest rules with headers that look like what a site would send.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Vendor(StrEnum):
    HOLOGIC = "hologic"
    SIEMENS = "siemens"
    GE = "ge"


class Photometric(StrEnum):
    MONOCHROME1 = "MONOCHROME1"  # low stored values display bright
    MONOCHROME2 = "MONOCHROME2"  # low stored values display dark


@dataclass(frozen=True)
class VendorProfile:
    """What a vendor's For Presentation mammograms typically carry in their headers."""

    vendor: Vendor
    manufacturer: str
    model_name: str
    software_versions: str
    station_name: str
    detector_type: str  # DIRECT (a-Se) or SCINTILLATOR (CsI)
    large_matrix: tuple[int, int]  # (rows, columns) of the large detector format
    small_matrix: tuple[int, int]  # (rows, columns) of the small paddle format
    pixel_spacing_mm: float
    bits_stored: int
    photometric: Photometric
    voi_lut_function: str  # LINEAR or SIGMOID
    anode: str
    filter_material: str
    kvp: float
    source_to_detector_mm: float


PROFILES: dict[Vendor, VendorProfile] = {
    Vendor.HOLOGIC: VendorProfile(
        vendor=Vendor.HOLOGIC,
        manufacturer="HOLOGIC, Inc.",
        model_name="Selenia Dimensions",
        software_versions="1.11.3.33",
        station_name="SYNTH-HOLOGIC",
        detector_type="DIRECT",
        large_matrix=(4096, 3328),
        small_matrix=(3328, 2560),
        pixel_spacing_mm=0.07,
        bits_stored=12,
        photometric=Photometric.MONOCHROME2,
        voi_lut_function="LINEAR",
        anode="TUNGSTEN",
        filter_material="RHODIUM",
        kvp=29.0,
        source_to_detector_mm=700.0,
    ),
    Vendor.SIEMENS: VendorProfile(
        vendor=Vendor.SIEMENS,
        manufacturer="SIEMENS",
        model_name="Mammomat Inspiration",
        software_versions="VB10A",
        station_name="SYNTH-SIEMENS",
        detector_type="DIRECT",
        large_matrix=(3584, 2816),
        small_matrix=(2816, 2128),
        pixel_spacing_mm=0.085,
        bits_stored=12,
        photometric=Photometric.MONOCHROME2,
        voi_lut_function="LINEAR",
        anode="TUNGSTEN",
        filter_material="RHODIUM",
        kvp=28.0,
        source_to_detector_mm=650.0,
    ),
    Vendor.GE: VendorProfile(
        vendor=Vendor.GE,
        manufacturer="GE MEDICAL SYSTEMS",
        model_name="Senographe Essential",
        software_versions="ADS_54.11",
        station_name="SYNTH-GE",
        detector_type="SCINTILLATOR",
        large_matrix=(3062, 2394),
        small_matrix=(2294, 1914),
        pixel_spacing_mm=0.1,
        bits_stored=14,
        photometric=Photometric.MONOCHROME1,
        voi_lut_function="SIGMOID",
        anode="RHODIUM",
        filter_material="RHODIUM",
        kvp=29.0,
        source_to_detector_mm=660.0,
    ),
}


def vendor_profile(vendor: Vendor | str) -> VendorProfile:
    return PROFILES[Vendor(vendor)]
