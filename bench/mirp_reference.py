"""MIRP's (the IBSI reference implementation) SUVmax, SUVmean and both SUVpeaks on the IBSI
PET + tumour masks in ../shared/reference/ibsi-sts-pet-ct, beside petseg's: the values
tests/test_measures.py pins. Needs ``pip install mirp==2.7.0``.

    python bench/mirp_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import mirp
import SimpleITK as sitk

from petseg.report import lesion_report

IBSI = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "ibsi-sts-pet-ct"
FEATURES = ("stat_max", "stat_mean", "loc_peak_loc", "loc_peak_glob")
OURS = ("suv_max", "suv_mean", "suv_peak_local", "suv_peak_global")


def main() -> int:
    if not IBSI.is_dir():
        print(f"{IBSI} is absent", file=sys.stderr)
        return 1
    print("patient  measure          MIRP          petseg        relative difference")
    for folder in sorted(IBSI.iterdir()):
        pet, mask = folder / "PET_image.nii.gz", folder / "PET_mask.nii.gz"
        table = mirp.extract_features(
            image=str(pet),
            mask=str(mask),
            image_modality="PET",
            base_feature_families=["statistics", "local_intensity"],
            export_features=True,
        )[0]
        report = lesion_report(sitk.ReadImage(str(mask)), sitk.ReadImage(str(pet)), case=folder.name)
        for feature, ours in zip(FEATURES, OURS):
            theirs = float(table[feature].iloc[0])
            print(
                f"{folder.name}  {ours:15s}  {theirs:.10g}  {report[ours]:.10g}  {abs(report[ours] / theirs - 1):.1e}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
