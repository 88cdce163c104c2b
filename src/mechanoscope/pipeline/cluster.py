"""Fields of view on a Dask cluster: one image is one task.

Each task (:func:`field_task`) runs on a worker: it reads one image, turns it into
its results with :func:`~mechanoscope.pipeline.field.process_field` and writes them
as that image's parts in the run folder (label image, cell rows, crops; each file
atomically), then returns what happened (done with timings and cell count, or failed
with the stage and message). Only the client writes ``run.json``, when a task's
result arrives, so the record never has two writers. A worker that dies mid-image
loses nothing: Dask gives the task to another worker, which writes the same files
again under temporary names and renames them into place; the record names the image
once. Memory per worker is bounded by the work unit (one field).

Workers build the segmenter and load the models once per process (keyed by the
run's settings) rather than receiving them with every task.

The cluster: ``"local"`` starts an embedded :class:`distributed.LocalCluster` of
worker processes; ``"tcp://host:port"`` connects to a running scheduler (e.g. one
that ``dask-jobqueue`` started on SLURM or PBS; see ``docs/cluster.md``); ``"none"``
runs in this process without Dask.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mechanoscope.errors import ConfigError

__all__ = ["open_client", "field_task", "run_tasks"]

_RESOURCES: dict[str, tuple[Any, list, Any]] = {}


@contextlib.contextmanager
def open_client(cluster: str, *, n_workers: int = 2, threads_per_worker: int = 1, memory_limit: str = "auto",
                connect_timeout_s: float = 10.0) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``cluster`` (``"local"`` or a scheduler address), closed on exit.

    Raises
    ------
    ConfigError
        The scheduler at the address does not answer within ``connect_timeout_s``.
    """
    from distributed import Client, LocalCluster

    if cluster == "local":
        local = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True, memory_limit=memory_limit,
                             dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(local)
        try:
            yield client
        finally:
            client.close()
            local.close()
        return
    try:
        client = Client(cluster, timeout=f"{connect_timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cluster {cluster!r}: no Dask scheduler answered within {connect_timeout_s:g} s ({type(exc).__name__}: {exc}); "
            "start one (`dask scheduler`, or dask-jobqueue on a cluster), check the address, or use cluster: local"
        ) from None
    try:
        yield client
    finally:
        client.close()


def _resources(spec: str) -> tuple[Any, list, Any]:
    """Segmenter, loaded models and extraction config of a run (built once per worker process)."""
    if spec not in _RESOURCES:
        from mechanoscope.cells.extract import ExtractConfig
        from mechanoscope.learn.predict import load_stiffness_model
        from mechanoscope.segment.batch import build_segmenter

        s = json.loads(spec)
        segmenter, _info, _cfg = build_segmenter(s["segmentation"], s.get("segmentation_settings") or {})
        models = [load_stiffness_model(p) for p in s["models"]]
        _RESOURCES.clear()  # one run's resources per worker at a time
        _RESOURCES[spec] = (segmenter, models, ExtractConfig.build(**s["extract_config"]))
    return _RESOURCES[spec]


def field_task(root: str, image_id: str, path: str, spec: str, *, batch_size: int, pixel_size_um: float | None, max_pixels: int | None) -> dict:
    """One image on a worker: process it, write its parts under ``root``, return its outcome (see the module docstring)."""
    from mechanoscope.pipeline.field_run import process_file_to_parts

    segmenter, models, ecfg = _resources(spec)
    return process_file_to_parts(Path(root), Path(path), image_id, segmenter=segmenter, models=models, extract_config=ecfg,
                                 batch_size=batch_size, pixel_size_um=pixel_size_um, max_pixels=max_pixels)


def run_tasks(client: Any, root: Path, jobs: Sequence[tuple[str, Path]], spec: str, *, batch_size: int, pixel_size_um: float | None,
              max_pixels: int | None, on_result: Callable[[str, dict], None]) -> None:
    """Submit one :func:`field_task` per ``(image_id, path)`` and call ``on_result(image_id, outcome)`` as each finishes.

    A task whose worker died is retried by Dask on another worker; a task that still
    cannot finish (its workers kept dying) is reported as failed at stage ``worker``.
    """
    from distributed import as_completed

    futures = {}
    for image_id, path in jobs:
        fut = client.submit(field_task, str(root), image_id, str(path), spec, batch_size=batch_size, pixel_size_um=pixel_size_um,
                            max_pixels=max_pixels, key=f"field-{image_id}-{abs(hash((str(root), image_id, spec))):x}", pure=False)
        futures[fut] = (image_id, path)
    for fut in as_completed(futures):
        image_id, path = futures[fut]
        try:
            outcome = fut.result()
        except Exception as exc:  # the task itself never raises: this is the worker dying again and again
            outcome = {"status": "failed", "image": str(path), "stage": "worker",
                       "error": f"{path}: the Dask worker processing it died repeatedly ({type(exc).__name__}: {exc}); "
                                "it may need more memory (memory_limit) — rerun to retry", "seconds": {}}
        on_result(image_id, outcome)
        fut.release()
