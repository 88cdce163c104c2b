"""Checks shared by the cell stage: label images, shapes, binary masks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from mechanoscope.errors import MechanoscopeError

__all__ = ["LabelImageError", "ShapeMismatchError", "as_label_array", "check_same_shape", "compact_ids", "relabel"]


class LabelImageError(MechanoscopeError):
    """A label image cannot be used as it is (binary mask, negative ids, wrong dtype)."""


class ShapeMismatchError(MechanoscopeError):
    """An image and its label image do not have the same shape."""


def as_label_array(labels: np.ndarray, where: str = "labels", *, relabel_components: bool = False) -> np.ndarray:
    """Validate a 2-D label image and return it as an integer array.

    Parameters
    ----------
    labels
        ``(H, W)`` integer or boolean array, 0 = background.
    where
        File name or description used in error messages.
    relabel_components
        If true, every connected component gets its own id
        (:func:`skimage.measure.label`), which turns a binary mask into a label image.

    Raises
    ------
    LabelImageError
        Non-integer data, negative ids, or a binary mask (only 0/1 or 0/255) with more
        than one connected component while ``relabel_components`` is false.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise LabelImageError(f"{where}: expected a 2-D label image, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise LabelImageError(
                f"{where}: a label image must hold integer cell ids (0 = background), got "
                f"dtype {arr.dtype}"
            )
    if arr.size and arr.min() < 0:
        raise LabelImageError(f"{where}: label image holds negative ids; ids must be >= 0")
    if relabel_components:
        return relabel(arr)
    if arr.size and arr.max() in (1, 255):
        values = np.unique(arr)
        if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}:
            n = _n_components(arr > 0)
            if n > 1:
                raise LabelImageError(
                    f"{where}: looks like a binary mask (values {values.tolist()}) with {n} "
                    "separate objects, not a label image with one id per cell; pass "
                    "relabel=True (CLI: --relabel) to give each connected component its own id"
                )
    return arr


def _n_components(mask: np.ndarray) -> int:
    _, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    return int(n)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Give each connected component (8-connected) of each id its own id, ``(H, W)`` int32/64."""
    from skimage.measure import label

    return label(np.asarray(labels), background=0, connectivity=2)


def check_same_shape(
    image_shape: tuple[int, ...], label_shape: tuple[int, ...], image_where: str, label_where: str
) -> None:
    """Raise :class:`ShapeMismatchError` naming both files if the shapes differ."""
    if tuple(image_shape) != tuple(label_shape):
        raise ShapeMismatchError(
            f"{image_where} has shape {tuple(image_shape)} but its label image {label_where} has "
            f"shape {tuple(label_shape)}; they must cover the same pixels (check that the right "
            "files are paired and that the labels were made from this image)"
        )


#: Largest label id measured as it is; above it the ids are first made consecutive (the
#: measurements allocate per id up to the largest one, so one id of 3·10⁹ would need
#: tens of GB) and mapped back afterwards, so ``cell_id`` is always the label image's id.
MAX_DIRECT_LABEL_ID = 100_000


def compact_ids(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels with ids 1..N, original id of each new id)``, or ``(labels, None)`` when small."""
    if lab.size == 0 or int(lab.max()) <= MAX_DIRECT_LABEL_ID:
        return lab, None
    ids, inverse = np.unique(lab, return_inverse=True)
    if ids[0] != 0:  # no background pixel: ids 1..N, 0 maps to nothing
        ids = np.concatenate([[0], ids])
        inverse = inverse + 1
    dtype = np.int32 if len(ids) < 2**31 else np.int64
    return inverse.reshape(lab.shape).astype(dtype), ids.astype(np.int64)
