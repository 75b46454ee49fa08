"""Random patches and the paper's augmentations (labels always nearest-neighbour)."""

from __future__ import annotations

import math

from petseg.train.config import TrainConfig


def train_transforms(config: TrainConfig):
    """Random patches and the paper's augmentations; labels always nearest-neighbour. Cases
    carry a sampling map (``with_sampling_map``); patch centres are background, lesion and
    hot background in the ratio NEG : POS : hard_negatives."""
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        DeleteItemsd,
        EnsureTyped,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandCropByLabelClassesd,
        RandGaussianNoised,
        SpatialPadd,
        SplitDimd,
    )

    keys = ["image", "label"]
    steps = [
        SpatialPadd(keys=[*keys, "sampling"], spatial_size=config.patch_size),
        RandCropByLabelClassesd(  # centres: background, lesion, hot background (load_cached's map)
            keys=keys,
            label_key="sampling",
            spatial_size=config.patch_size,
            num_classes=3,
            ratios=[config.pos_neg[1], config.pos_neg[0], config.hard_negatives],
            warn=False,
        ),
        DeleteItemsd(keys="sampling"),
    ]
    clicks = config.settings.click_sigma_mm is not None
    if clicks:  # before the spatial augmentation, so the click maps move with the image
        from petseg.train.clicks import SimulateClicksd

        steps.append(
            SimulateClicksd(
                spacing=config.settings.target_spacing,
                sigma_mm=config.settings.click_sigma_mm,
                hot_suv=config.hot_suv,
                click_free=config.click_free,
                scribbles=config.scribbles,
            )
        )
    # gamma and noise change CT and PET, never the click maps
    modalities = [m.lower() for m in config.settings.modalities]
    names = [*modalities, "tumor", "background"] if clicks else modalities
    if config.augment:
        steps += [
            Rand3DElasticd(  # one resampling for translation, axial rotation, scaling and elastic
                keys=keys,
                prob=0.5,
                sigma_range=(5.0, 8.0),
                magnitude_range=(50.0, 150.0),
                translate_range=(10, 10, 10),
                rotate_range=(0.0, 0.0, math.pi / 12),
                scale_range=(0.1, 0.1, 0.1),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            # gamma per channel: over the stacked image, min/max would mix CT [0, 1] with PET SUV
            # and bend the CT far more than the paper's 0.7-1.5 intends
            SplitDimd(keys="image", output_postfixes=names, dim=0, update_meta=False),
            *(RandAdjustContrastd(keys=[f"image_{m}"], prob=0.3, gamma=(0.7, 1.5)) for m in modalities),
        ]
        if clicks:
            steps.append(RandGaussianNoised(keys=["image_ct", "image_pet"], prob=0.2, std=0.05))
        steps += [
            ConcatItemsd(keys=[f"image_{n}" for n in names], name="image", dim=0),
            DeleteItemsd(keys=[f"image_{n}" for n in names]),
        ]
        if not clicks:  # as it always was: one noise draw over the stacked image
            steps.append(RandGaussianNoised(keys=["image"], prob=0.2, std=0.05))
    steps.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(steps)
