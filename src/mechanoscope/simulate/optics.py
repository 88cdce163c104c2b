"""Image formation of label-free microscopy of cells as thin phase objects.

Physics
-------
A cell of height ``h(x, y)`` (µm) and refractive-index difference ``Δn`` to the
medium delays the transmitted wave by the phase

    φ(x, y) = 2π · Δn · h(x, y) / λ

(λ the vacuum wavelength) and absorbs weakly, amplitude ``exp(-α·h)``. The
complex field just after the specimen is ``U₀ = exp(-α·h + i·φ)``.

* **Bright-field** at defocus Δz: ``U₀`` is propagated by the angular-spectrum
  method, ``Û(f; Δz) = Û₀(f) · P(f) · exp(i·(k_z(f) − k)·Δz)`` with
  ``k = 2π·n_m/λ``, ``k_z = sqrt(k² − (2π|f|)²)`` and the objective pupil
  ``P(f) = [|f| ≤ NA_obj/λ]``. The coherent image is ``|U|²``. Partial coherence of
  the condenser (illumination cone of half-angle asin(NA_c/n_m)) is modelled as a
  Gaussian blur of the intensity whose width grows with |Δz|: a point defocused by Δz
  is smeared over a disc of radius ``Δz·tan θ_c``; we use σ = ½·|Δz|·tan θ_c plus a
  small in-focus term 0.21·λ/(NA_obj + NA_c). For small Δz and a weak phase object
  this reproduces the transport-of-intensity equation ``I ≈ 1 − (Δz/k)·∇²φ``: a
  cell (a positive phase bump) turns bright for Δz > 0 and dark for Δz < 0 and is
  invisible in focus.
* **Zernike phase contrast**: the undiffracted light passes the phase ring in the
  back focal plane and is attenuated (amplitude transmission t) and phase-shifted
  (θ, −π/2 for positive/dark contrast). Because the ring has finite width it also
  shifts the lowest spatial frequencies of the object itself; we model the ring as a
  Gaussian low-pass ``G_σ`` of real-space width σ = ``halo_um``:
  ``U = U₀ + (t·e^{iθ} − 1)·(G_σ ∗ U₀)``. The cell appears dark on a grey background
  surrounded by the bright **halo** seen on real phase-contrast images.
* **Illumination** is multiplied by a smooth field (gradient + vignetting).
* **Camera**: electrons ``~ Poisson(N_ph · I)``, read noise ``~ N(0, σ_r²)`` e⁻,
  ``ADU = offset + gain · electrons``, rounded and clipped to the bit depth. In a flat
  region the variance is therefore ``gain²·(N_ph·I + σ_r²) + 1/12`` ADU².

All lengths are in µm; the pixel size converts them to pixels, so results do not
depend on the magnification except through the sampling.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.fft as sfft
from pydantic import Field, model_validator
from scipy import ndimage as ndi

from mechanoscope.config import StrictConfig
from mechanoscope.errors import ConfigError

__all__ = [
    "OpticsConfig",
    "CameraConfig",
    "phase_from_height",
    "transmitted_field",
    "propagate",
    "render_brightfield",
    "render_phase_contrast",
    "render_intensity",
    "illumination_field",
    "apply_camera",
    "laplacian_spectral",
]


class OpticsConfig(StrictConfig):
    """Parameters of the microscope optics. Lengths in µm."""

    wavelength_um: float = Field(0.55, gt=0.2, le=2.0, description="Vacuum wavelength λ of the illumination (µm).")
    medium_refractive_index: float = Field(1.337, ge=1.0, le=1.6, description="Refractive index n_m of the culture medium.")
    delta_n: float = Field(0.04, gt=0.0, le=0.2, description="Refractive-index difference cell − medium (Δn).")
    absorption_per_um: float = Field(0.003, ge=0.0, le=1.0, description="Amplitude attenuation α per µm of cell height (weak absorption).")
    pixel_size_um: float = Field(0.65, gt=0.0, le=20.0, description="Edge length of one camera pixel in the specimen plane (µm).")
    objective_na: float = Field(0.3, gt=0.0, le=1.0, description="Numerical aperture of the objective (dry/water, ≤ 1).")
    condenser_na: float = Field(0.1, ge=0.0, le=1.0, description="Numerical aperture of the condenser; sets the partial-coherence blur of defocused bright-field.")
    phase_ring_transmission: float = Field(0.4, gt=0.0, le=1.0, description="Amplitude transmission t of the Zernike phase ring.")
    phase_ring_shift_rad: float = Field(-np.pi / 2, ge=-np.pi, le=np.pi, description="Phase shift θ of the ring (−π/2: positive phase contrast, cells dark).")
    phase_ring_halo_um: float = Field(4.0, gt=0.0, le=100.0, description="Real-space width σ of the low-pass passed by the finite-width ring; sets the halo width (µm).")

    @model_validator(mode="after")
    def _na_vs_medium(self) -> "OpticsConfig":
        if self.condenser_na >= self.medium_refractive_index:
            raise ValueError(
                f"condenser_na {self.condenser_na} must be below the medium index "
                f"{self.medium_refractive_index}"
            )
        return self

    @property
    def k_um(self) -> float:
        """Wavenumber in the medium, 2π·n_m/λ (rad/µm)."""
        return 2 * np.pi * self.medium_refractive_index / self.wavelength_um


class CameraConfig(StrictConfig):
    """Parameters of the camera."""

    photons_per_pixel: float = Field(5000.0, gt=0.0, le=1e7, description="Mean detected photo-electrons per pixel at background intensity 1 (QE included).")
    gain_adu_per_electron: float = Field(0.5, gt=0.0, le=100.0, description="Conversion gain (ADU per electron).")
    read_noise_e: float = Field(3.0, ge=0.0, le=1000.0, description="Gaussian read noise (electrons RMS).")
    offset_adu: float = Field(100.0, ge=0.0, description="Dark offset (ADU).")
    bit_depth: int = Field(16, ge=8, le=16, description="Bits per pixel; values are clipped to [0, 2^bit_depth − 1].")


def phase_from_height(height_um: np.ndarray, optics: OpticsConfig) -> np.ndarray:
    """Phase delay φ = 2π·Δn·h/λ (rad) of a height map (µm)."""
    return (2 * np.pi * optics.delta_n / optics.wavelength_um) * np.asarray(height_um, dtype=np.float64)


def transmitted_field(height_um: np.ndarray, optics: OpticsConfig, absorption_um: np.ndarray | None = None) -> np.ndarray:
    """Complex field ``exp(-α·h + i·φ)`` just after the specimen.

    Parameters
    ----------
    height_um
        Height map (Y, X) in µm (cells and debris).
    absorption_um
        Optional extra absorbing thickness (Y, X) in µm (e.g. dark debris); it
        attenuates with ``absorption_per_um`` ×10 and adds no phase.
    """
    h = np.asarray(height_um, dtype=np.float64)
    att = optics.absorption_per_um * h
    if absorption_um is not None:
        att = att + 10 * optics.absorption_per_um * absorption_um
    return np.exp(-att + 1j * phase_from_height(h, optics))


def _freq_grid(shape: tuple[int, int], pixel_size_um: float) -> tuple[np.ndarray, np.ndarray]:
    fy = sfft.fftfreq(shape[0], d=pixel_size_um)
    fx = sfft.fftfreq(shape[1], d=pixel_size_um)
    return fy[:, None], fx[None, :]


def _pad(arr: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(arr, pad, mode="reflect") if pad > 0 else arr


def _pad_width(shape: tuple[int, ...], optics: OpticsConfig, extent_um: float) -> int:
    px = int(np.ceil(extent_um / optics.pixel_size_um))
    return int(min(max(px, 8), min(shape) - 1))


def propagate(field: np.ndarray, defocus_um: float, optics: OpticsConfig, *, pupil: bool = True) -> np.ndarray:
    """Angular-spectrum propagation of a complex field by ``defocus_um`` (µm).

    Frequencies beyond the objective cut-off NA/λ (if ``pupil``) and evanescent
    components are removed. Positive defocus propagates past the specimen plane.
    The field is taken as periodic; pad it first if its borders matter.
    """
    fy, fx = _freq_grid(field.shape, optics.pixel_size_um)
    f2 = fy**2 + fx**2
    k = optics.k_um
    kz2 = k**2 - (2 * np.pi) ** 2 * f2
    prop = np.zeros(field.shape, dtype=np.complex128)
    ok = kz2 > 0
    if pupil:
        ok &= f2 <= (optics.objective_na / optics.wavelength_um) ** 2
    prop[ok] = np.exp(1j * (np.sqrt(kz2[ok]) - k) * defocus_um)
    return sfft.ifft2(sfft.fft2(field, workers=-1) * prop, workers=-1)


def _coherence_sigma_px(defocus_um: float, optics: OpticsConfig) -> float:
    sin_c = optics.condenser_na / optics.medium_refractive_index
    tan_c = sin_c / np.sqrt(1 - sin_c**2)
    sigma_um = 0.5 * abs(defocus_um) * tan_c
    if optics.condenser_na > 0:
        sigma_um = np.hypot(sigma_um, 0.21 * optics.wavelength_um / (optics.objective_na + optics.condenser_na))
    return float(sigma_um / optics.pixel_size_um)


def render_brightfield(
    height_um: np.ndarray,
    optics: OpticsConfig,
    defocus_um: float,
    absorption_um: np.ndarray | None = None,
) -> np.ndarray:
    """Bright-field intensity (Y, X) of a height map at a given defocus.

    Background intensity is 1. See the module docstring for the model.
    """
    pad = _pad_width(height_um.shape, optics, 4 * abs(defocus_um) + 8)
    field = transmitted_field(_pad(height_um, pad), optics, None if absorption_um is None else _pad(absorption_um, pad))
    intensity = np.abs(propagate(field, defocus_um, optics)) ** 2
    sigma = _coherence_sigma_px(defocus_um, optics)
    if sigma > 0.05:
        intensity = ndi.gaussian_filter(intensity, sigma, mode="reflect")
    return intensity[pad:-pad, pad:-pad] if pad else intensity


def render_phase_contrast(
    height_um: np.ndarray,
    optics: OpticsConfig,
    defocus_um: float = 0.0,
    absorption_um: np.ndarray | None = None,
) -> np.ndarray:
    """Zernike phase-contrast intensity (Y, X), normalised so the background is 1.

    The ring acts on ``G_σ ∗ U`` (σ = ``phase_ring_halo_um``), which yields the halo.
    """
    pad = _pad_width(height_um.shape, optics, 4 * optics.phase_ring_halo_um + 4 * abs(defocus_um) + 8)
    field = transmitted_field(_pad(height_um, pad), optics, None if absorption_um is None else _pad(absorption_um, pad))
    fy, fx = _freq_grid(field.shape, optics.pixel_size_um)
    f2 = fy**2 + fx**2
    sigma = optics.phase_ring_halo_um
    ring_lowpass = np.exp(-2 * np.pi**2 * sigma**2 * f2)  # FT of a unit-area Gaussian of width σ
    ring = optics.phase_ring_transmission * np.exp(1j * optics.phase_ring_shift_rad)
    spec = sfft.fft2(field, workers=-1)
    spec = spec * (1 + (ring - 1) * ring_lowpass)
    field = sfft.ifft2(spec, workers=-1)
    intensity = np.abs(propagate(field, defocus_um, optics)) ** 2
    intensity /= optics.phase_ring_transmission**2  # background → 1
    sig = _coherence_sigma_px(defocus_um, optics)
    if sig > 0.05:
        intensity = ndi.gaussian_filter(intensity, sig, mode="reflect")
    return intensity[pad:-pad, pad:-pad] if pad else intensity


def render_intensity(
    height_um: np.ndarray,
    optics: OpticsConfig,
    modality: Literal["brightfield", "phase_contrast"],
    defocus_um: float,
    absorption_um: np.ndarray | None = None,
) -> np.ndarray:
    """Dispatch to :func:`render_brightfield` or :func:`render_phase_contrast`."""
    if modality == "brightfield":
        return render_brightfield(height_um, optics, defocus_um, absorption_um)
    if modality == "phase_contrast":
        return render_phase_contrast(height_um, optics, defocus_um, absorption_um)
    raise ConfigError(f"modality must be 'brightfield' or 'phase_contrast', got {modality!r}")


def illumination_field(shape: tuple[int, int], variation: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative illumination: random linear gradient plus vignetting.

    ``variation`` is the largest peak-to-peak relative change across the field
    (0 = perfectly flat): gradient and vignetting partly cancel, so a field varies by
    0.25–1× ``variation`` (median about 0.7×, over seeds). Mean is 1.
    """
    if variation < 0:
        raise ConfigError(f"illumination variation must be ≥ 0, got {variation}")
    ny, nx = shape
    y = np.linspace(-1, 1, ny)[:, None]
    x = np.linspace(-1, 1, nx)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(-0.5, 0.5, size=2)
    w_grad = rng.uniform(0.3, 0.7)
    grad = np.cos(angle) * x + np.sin(angle) * y  # in [-√2, √2]
    vign = -((x - cx) ** 2 + (y - cy) ** 2)
    vign = vign - vign.mean()
    vign /= max(np.ptp(vign), 1e-12)
    field = 1 + variation * (w_grad * grad / (2 * np.sqrt(2)) + (1 - w_grad) * vign)
    return field / field.mean()


def apply_camera(intensity: np.ndarray, camera: CameraConfig, rng: np.random.Generator) -> np.ndarray:
    """Photon shot noise, read noise, gain, offset and quantisation.

    Parameters
    ----------
    intensity
        Relative intensity (Y, X), background ≈ 1, non-negative.

    Returns
    -------
    numpy.ndarray
        uint16 (bit depth ≤ 16) camera image in ADU.
    """
    lam = np.clip(intensity, 0, None) * camera.photons_per_pixel
    electrons = rng.poisson(lam).astype(np.float64)
    if camera.read_noise_e > 0:
        electrons += rng.normal(0.0, camera.read_noise_e, size=electrons.shape)
    adu = camera.offset_adu + camera.gain_adu_per_electron * electrons
    top = 2**camera.bit_depth - 1
    return np.clip(np.rint(adu), 0, top).astype(np.uint16)


def laplacian_spectral(arr: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """∇² of a periodic 2-D array by FFT (units: per µm²)."""
    fy, fx = _freq_grid(arr.shape, pixel_size_um)
    return np.real(sfft.ifft2(sfft.fft2(arr) * (-(2 * np.pi) ** 2 * (fy**2 + fx**2))))
