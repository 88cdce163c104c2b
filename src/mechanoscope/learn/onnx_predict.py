"""Applying an exported ONNX model (``mechanoscope export --format onnx``) with onnxruntime.

:func:`load_onnx_model` reads the model folder's config and normalisation from the
file's metadata (:data:`mechanoscope.learn.export.ONNX_METADATA_KEYS`) and returns a
:class:`~mechanoscope.learn.predict.StiffnessModel` whose members run the ONNX graph,
so :func:`~mechanoscope.learn.predict.predict_cells` and ``mechanoscope predict
--model MODEL.onnx`` apply it exactly like the model folder: same normalisation,
temperature, conformal intervals and output columns. Test-time augmentation, when
the model uses it, is inside the graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mechanoscope.errors import MechanoscopeError

__all__ = ["OnnxMember", "load_onnx_model", "onnx_session"]


def onnx_session(path: str | os.PathLike[str], *, threads: int = 0):
    """An onnxruntime CPU session (CUDA first when onnxruntime has it and a GPU is there).

    ``threads`` sets the intra-op threads (0: onnxruntime's default, one per core).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise MechanoscopeError(f"{path}: onnxruntime cannot open it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); it is damaged or not an ONNX model — export it again with `mechanoscope export`") from exc


class _SharedRun:
    """One session shared by the members: a batch runs once, each member reads its slice."""

    def __init__(self, session) -> None:
        self.session = session
        self._last_in: Any = None
        self._last_out: np.ndarray | None = None

    def __call__(self, x) -> np.ndarray:
        if x is self._last_in and self._last_out is not None:
            return self._last_out
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        out = self.session.run(None, {"crops": np.ascontiguousarray(arr, dtype=np.float32)})[0]
        self._last_in, self._last_out = x, out  # holding x keeps its identity unique
        return out


class OnnxMember:
    """Ensemble member ``k`` of an ONNX graph, callable like a torch network on a batch.

    ``member(x)`` with ``x`` a ``(B, C, H, W)`` float tensor returns the member's
    ``(B, n_out)`` outputs as a torch tensor; all members of one graph share one run
    per batch. ``to()`` and ``eval()`` return the member (it runs where onnxruntime runs).
    """

    def __init__(self, shared: _SharedRun, k: int) -> None:
        self._shared, self.k = shared, k

    def to(self, *args: Any, **kwargs: Any) -> OnnxMember:
        return self

    def eval(self) -> OnnxMember:
        return self

    def __call__(self, x):
        import torch

        return torch.from_numpy(np.ascontiguousarray(self._shared(x)[:, self.k]))


def _metadata(path: Path, session) -> dict[str, dict]:
    from mechanoscope.learn.export import ONNX_METADATA_KEYS

    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in ONNX_METADATA_KEYS if k not in meta]
    if missing:
        raise MechanoscopeError(f"{path}: this ONNX file has no mechanoscope metadata ({', '.join(missing)} missing); only files written by `mechanoscope export --format onnx` can be applied by `predict`")
    try:
        return {k.split(".", 1)[1]: json.loads(meta[k]) for k in ONNX_METADATA_KEYS}
    except json.JSONDecodeError as exc:
        raise MechanoscopeError(f"{path}: the mechanoscope metadata of this ONNX file is damaged ({exc}); export the model folder again") from exc


def load_onnx_model(path: str | os.PathLike[str], *, threads: int = 0):
    """Load an exported ONNX model as a :class:`~mechanoscope.learn.predict.StiffnessModel`.

    Parameters
    ----------
    path
        A ``.onnx`` file written by :func:`mechanoscope.learn.export.export_onnx` (or the
        ``model.onnx`` of a bioimage.io package written by mechanoscope).
    threads
        onnxruntime intra-op threads (0: default).

    Raises
    ------
    MechanoscopeError
        The file is missing, not ONNX, lacks mechanoscope's metadata, or its schema
        version is not the one this mechanoscope reads.
    """
    from mechanoscope.io.model_folder import MODEL_SCHEMA_VERSION
    from mechanoscope.learn.predict import StiffnessModel

    p = Path(path)
    if not p.is_file():
        raise MechanoscopeError(f"{p}: no such ONNX file; check the path")
    session = onnx_session(p, threads=threads)
    meta = _metadata(p, session)
    cfg = dict(meta["config"])
    if cfg.get("schema_version") != MODEL_SCHEMA_VERSION:
        raise MechanoscopeError(f"{p}: exported from a model folder of schema version {cfg.get('schema_version')!r}; this mechanoscope reads {MODEL_SCHEMA_VERSION} — export it again with this version")
    export = meta["export"]
    k = int(export["output"]["members"])
    cfg["exported_tta_in_graph"] = bool(export.get("tta_in_graph", cfg.get("tta", False)))
    cfg["tta"] = False  # the graph already averages the views when the model uses them
    cfg["runtime"] = "onnxruntime"
    shared = _SharedRun(session)
    # no applicability-domain reference: it needs the torch network's penultimate features
    return StiffnessModel(p, cfg, dict(meta["normalization"]), [OnnxMember(shared, i) for i in range(k)], split=None, domain=None)
