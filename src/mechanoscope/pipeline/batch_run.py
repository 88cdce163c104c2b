"""``mechanoscope run CONFIG.yaml``: a batch run described by one file, locally or on a Dask cluster.

:func:`run_batch` expands the inputs (:func:`~mechanoscope.pipeline.run_config.expand_inputs`),
opens the cluster (:func:`~mechanoscope.pipeline.cluster.open_client`) and runs
:func:`~mechanoscope.pipeline.predict.predict_run` over the images, one field of view
per task: the run folder, its ``run.json`` record, resume after a kill, failure
isolation and the consolidated cell table are those of ``predict IMAGES``. Columns
parsed from the file names (``layout_pattern``) join the table; the run file itself is
copied into the run folder (``run_config.json``) as provenance.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechanoscope.io.atomic import check_output_folder_path, write_json
from mechanoscope.pipeline.run_config import RunConfig, expand_inputs

__all__ = ["run_batch"]


def run_batch(cfg: RunConfig, *, progress: Callable[[str, int, int], None] | None = None, command: str | list[str] | None = None,
              source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run ``cfg`` and return the prediction summary (see :func:`~mechanoscope.pipeline.predict.predict_run`).

    Adds ``cluster`` (what ran the images), ``n_input_images``, ``cells_per_second``
    (end to end, files to the written table) and ``images_per_second``.
    """
    from mechanoscope.pipeline.cluster import open_client
    from mechanoscope.pipeline.predict import predict_run

    t0 = time.perf_counter()
    out = Path(cfg.out)
    check_output_folder_path(out, "run folder (out)")
    paths, columns = expand_inputs(cfg)
    if cfg.cluster == "none":
        ctx: Any = contextlib.nullcontext(None)
    else:
        ctx = open_client(cfg.cluster, n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker, memory_limit=cfg.memory_limit,
                          connect_timeout_s=cfg.connect_timeout_s)
    with ctx as client:
        info = predict_run(
            source or (cfg.inputs[0] if len(cfg.inputs) == 1 else ", ".join(cfg.inputs)), cfg.models, out,
            segmentation=cfg.segmentation, segmentation_settings=cfg.segmentation_settings or None, pixel_size_um=cfg.pixel_size_um,
            extract_config=cfg.extract or None, batch_size=cfg.batch_size, progress=progress, overwrite=cfg.overwrite, max_pixels=cfg.max_pixels,
            command=command, paths=paths, image_columns=columns or None, client=client,
        )
        workers = len(client.scheduler_info().get("workers", {})) if client is not None else 0
    write_json(cfg.model_dump(mode="json"), out / "run_config.json")
    seconds = time.perf_counter() - t0
    info.update(
        cluster={"kind": cfg.cluster, "workers": workers} if client is not None else {"kind": "none", "workers": 0},
        n_input_images=len(paths),
        cells_per_second=round(info["n_cells"] / seconds, 2) if seconds > 0 else None,
        images_per_second=round(len(paths) / seconds, 3) if seconds > 0 else None,
        run_seconds=round(seconds, 2),
    )
    return info
