"""Typed configuration of stiffness / phenotype model training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mechanoscope.config import StrictConfig

__all__ = ["TrainConfig", "AugmentConfig"]


class AugmentConfig(StrictConfig):
    """Microscopy-appropriate augmentation of single-cell crops (applied on the fly)."""

    rotate90_flip: bool = Field(True, description="Random 90° rotations and flips (cells have no preferred orientation).")
    affine_degrees: float = Field(0.0, ge=0, le=180, description="Maximum extra rotation (degrees). Off by default: the bilinear resampling of any affine step damps pixel-scale texture (stress fibres) by a random amount, which costs regression accuracy (benchmarks/stiffness.py) and a third of the training time.")
    affine_scale: float = Field(0.0, ge=0, le=0.5, description="Maximum relative zoom (±). Keep small: size carries information.")
    affine_translate_fraction: float = Field(0.0, ge=0, le=0.3, description="Maximum shift as a fraction of the crop size (resampled like the rotation).")
    intensity_scale: float | None = Field(None, ge=0, le=1, description="Maximum relative change of the contrast (±). None = the task's default: 0.15 for classification, 0 for regression (a value read from the image, such as the stress-fibre texture amplitude that carries the modulus, must not be rescaled at random).")
    gamma: float | None = Field(None, ge=0, le=1, description="Maximum change of the contrast gamma (±, on |contrast|). None = the task's default: 0.15 for classification, 0 for regression.")
    blur_sigma_px: float | None = Field(None, ge=0, le=5, description="Maximum Gaussian blur σ (crop pixels), applied to half the crops. None = the task's default: 0.7 for classification, 0 for regression (blur damps pixel-scale texture).")
    noise_std: float = Field(0.05, ge=0, le=1, description="Maximum added Gaussian noise (units of normalised contrast).")

    def for_task(self, task: str) -> "AugmentConfig":
        """Copy with every ``None`` (task default) replaced by the value for ``task``.

        Photometric changes (contrast scale, gamma, blur) make a classifier robust to
        imaging differences, but for regression they randomly rescale exactly what the
        value is read from: on the benchmark's bright-field regression set (2,981
        AFM-labelled training cells) switching them off lowered the mean APE against the
        true modulus from 31.3 % to 30.0 % (``benchmarks/stiffness.py``).
        """
        defaults = _PHOTOMETRIC_DEFAULTS["regression" if task == "regression" else "classification"]
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})


_PHOTOMETRIC_DEFAULTS = {
    "classification": {"intensity_scale": 0.15, "gamma": 0.15, "blur_sigma_px": 0.7},
    "regression": {"intensity_scale": 0.0, "gamma": 0.0, "blur_sigma_px": 0.0},
}


class TrainConfig(StrictConfig):
    """How to train a model on a cell table + crop store."""

    target: str = Field(description="Column to learn: a class column (e.g. 'label') or a value column (e.g. 'stiffness_pa').")
    task: Literal["auto", "classification", "regression"] = Field("auto", description="auto: numeric columns with many values → regression, else classification.")
    model_type: Literal["cnn", "features"] = Field("cnn", description="cnn on crops, or gradient boosting on the morphology table (baseline).")
    architecture: Literal["compact", "resnet", "densenet", "efficientnet"] = Field("compact", description="CNN architecture (MONAI networks are trained from scratch).")
    width: int = Field(16, ge=4, le=256, description="Base width of the compact CNN.")
    pooling: Literal["auto", "avg", "max"] = Field("auto", description="Downsampling of the compact CNN: 2×2 averages or 2×2 maxima. auto = the task's default: avg for regression (estimates the amplitude of faint texture with less noise), max for classification (the network of model folders written before this option).")
    loss: Literal["mse", "gaussian"] = Field("mse", description="Regression loss: MSE on the (log) target as in the paper, or heteroscedastic Gaussian NLL.")
    log_target: bool = Field(True, description="Regression on log10 of the target (always for *_pa columns).")
    channels: list[str] = Field(default_factory=lambda: ["intensity", "mask"], description="Crop channels fed to the network.")
    epochs: int = Field(40, ge=1, le=10000, description="Maximum epochs.")
    batch_size: int = Field(64, ge=1, le=4096, description="Crops per batch.")
    learning_rate: float = Field(2e-3, gt=0, le=1, description="AdamW learning rate (cosine-annealed).")
    weight_decay: float = Field(1e-4, ge=0, le=1, description="AdamW weight decay.")
    patience: int = Field(10, ge=1, le=1000, description="Early stopping: epochs without improvement of the validation loss, counted only after 60 % of the epochs, when the one-cycle learning rate anneals (so training never stops before 60 % of the epochs + patience); the best epoch is kept in any case.")
    group_column: str = Field("image_id", description="Cells sharing a value of this column (image, well, experiment) are never split across train/val/test.")
    val_fraction: float = Field(0.15, ge=0, lt=0.5, description="Fraction of groups for validation (early stopping).")
    calibration_fraction: float = Field(0.15, ge=0, lt=0.5, description="Fraction of groups for calibration (temperature scaling, conformal intervals).")
    test_fraction: float = Field(0.2, ge=0, lt=0.6, description="Fraction of groups held out for the reported test metrics.")
    balance_classes: bool = Field(True, description="Weight the loss by inverse class frequency.")
    min_cells_per_class: int = Field(10, ge=1, description="Refuse to train if a class has fewer cells.")
    qc_only: bool = Field(True, description="Use only cells with qc_pass = True; a table without a qc_pass column is then an error (false: train on every cell).")
    tta: bool = Field(False, description="Test-time augmentation: average predictions over the 8 rotations/flips of each crop (8× slower inference, less variance).")
    ensemble_size: int = Field(1, ge=1, le=20, description="Number of independently initialised networks (deep ensemble).")
    interval_level: float = Field(0.9, gt=0.5, lt=1.0, description="Nominal coverage of conformal prediction intervals (regression).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation.")
    split_from: str | None = Field(None, description="Model folder (or its split.json) whose train/val/calibration/test assignment of groups to reuse, so that several models of one data set share the held-out images; groups it does not list are split afresh.")
    seed: int = Field(0, description="Seed of splits, initialisation, shuffling and augmentation.")
    num_threads: int = Field(0, ge=0, le=256, description="torch CPU threads (0 = torch default).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the networks train and predict: 'auto' = the CUDA GPU when there is one, else the CPU.")
    max_train_seconds: float | None = Field(None, gt=0, description="Stop training after this many seconds (keeps the best epoch so far).")
    refit: bool = Field(
        False,
        description=(
            "After the validation cells have chosen each network's best epoch, train it again from the same "
            "initialisation on the training + validation cells for that many epochs and keep the result, so that "
            "every labelled cell outside the calibration and test images is learnt from (about 2.4× the training "
            "time; the features baseline is simply fitted on both). Calibration and test cells stay held out, so "
            "intervals, temperature and test metrics remain honest; validation metrics are then in-sample and are "
            "not reported."
        ),
    )

    def pooling_for(self, task: str) -> str:
        """The compact CNN's downsampling for ``task``: ``pooling`` unless it is ``"auto"``.

        On the benchmark (``benchmarks/stiffness.py``) averaging lowered the regression
        mean APE against the true modulus on all three splits tried (30.0 → 29.2 %,
        28.8 → 28.6 %, 30.9 → 29.4 %) but cost the classifier (AUC 0.998 → 0.996,
        F1 0.986 → 0.979).
        """
        if self.pooling != "auto":
            return self.pooling
        return "avg" if task == "regression" else "max"

    @model_validator(mode="after")
    def _fractions(self) -> "TrainConfig":
        if self.val_fraction + self.calibration_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + calibration_fraction + test_fraction must leave at least 10 % of groups for training")
        if not self.channels:
            raise ValueError("channels must name at least one crop channel")
        return self
