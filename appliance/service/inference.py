"""Automatic inference: segment jobs → masks, overlays and measurements under ``results/<project>/``.

For an image ``inbox/images/<project>/<dir>/<name>.<ext>`` the worker writes ``results/<project>/<dir>/<name>_mask.tif``
(label image) and ``<name>_overlay.png`` atomically (``<name>_<ext>_…`` when another extension took ``<name>``),
stores one measurement row per class in the same transaction that marks the image and its job done, then rewrites
``results/<project>/measurements.csv`` from the store. A crash at any point leaves either no trace (the job is leased
again and the files are overwritten) or a finished image: never a row twice. One ONNX Runtime session is kept loaded
per model.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from appliance.data.io import read_image
from appliance.errors import ApplianceError, ImageReadError, readable
from appliance.faults import fault_point
from appliance.pipeline.measurements import MEASUREMENT_COLUMNS, write_measurements_csv
from appliance.pipeline.outputs import write_results
from appliance.pipeline.predictor import OnnxPredictor
from appliance.pipeline.result_names import ResultFiles, result_files, result_stem
from appliance.service.files import file_hash, stat_key
from appliance.service.jobs import SEGMENT
from appliance.settings import Settings
from appliance.store import Image, Job, JobStatus, Model, Store

SERVICE_COLUMNS = ("model_id", "processed_at")
CSV_COLUMNS = (*MEASUREMENT_COLUMNS, *SERVICE_COLUMNS)
MEASUREMENTS_FILE = "measurements.csv"


def write_project_csv(store: Store, results: Path, project: str) -> Path:
    """``results/<project>/measurements.csv`` from the store: one row per class of the latest version of each image."""
    rows = [
        {column: {**row, "image": row["path"]}.get(column) for column in CSV_COLUMNS}
        for row in store.measurements(project)
    ]
    return write_measurements_csv(results / project / MEASUREMENTS_FILE, rows, extra_columns=SERVICE_COLUMNS)


class InferenceWorker:
    """Claims segment jobs of projects that have an active model and processes them one at a time."""

    def __init__(self, settings: Settings, store: Store, *, log: Callable[[str], None] = print):
        self.settings = settings
        self.store = store
        self.log = log
        self.owner = f"inference@{socket.gethostname()}:{os.getpid()}"
        self._predictors: dict[str, OnnxPredictor] = {}
        self.processed = 0

    def predictor(self, model: Model) -> OnnxPredictor:
        """The loaded session of a model (sessions of models no longer active are dropped)."""
        if model.id not in self._predictors:
            predictor = OnnxPredictor(model.path, engine_cache=self.settings.engine_cache_dir)
            self._predictors = {model.id: predictor, **self._predictors}
            active = set(self.store.active_projects().values())
            self._predictors = {k: v for k, v in self._predictors.items() if k in active or k == model.id}
        return self._predictors[model.id]

    def providers_in_use(self) -> list[str]:
        """The ONNX Runtime providers the loaded sessions really run on (CUDA may fall back to the CPU)."""
        return sorted({predictor.provider for predictor in list(self._predictors.values())})

    def run_once(self) -> bool:
        """Process one job if there is one; True when a job was taken."""
        active = self.store.active_projects()
        job = self.store.claim(SEGMENT, self.owner, lease_seconds=self.settings.lease_seconds, projects=active)
        if job is None:
            return False
        try:
            self.process(job, active[job.project])
        except Exception as error:  # an unforeseen failure spends an attempt like any other; the queue retries
            self._fail(job, f"{type(error).__name__}: {error}")
        return True

    def process(self, job: Job, model_id: str) -> None:
        image = self.store.image(job.key)
        path = Path(image.path)
        key = stat_key(path)
        if key is None:
            self._finish_without_result(job, image, JobStatus.MISSING, f"{path} disappeared before it was segmented")
            return
        if key != (image.size, image.mtime_ns):
            self._finish_without_result(job, image, JobStatus.SUPERSEDED, f"{path} changed; the new version is queued")
            return
        try:
            pixels = read_image(path)
        except ImageReadError as error:
            if time.time() - key[1] / 1e9 < self.settings.quiet_period:
                # maybe written in pauses longer than stable_seconds: look again later without counting an attempt
                self.store.release(job.id, self.owner, retry_after=self.settings.stable_seconds, note=str(error))
            else:
                self._give_up(job, image, str(error))
            return
        model = self.store.model(model_id)
        started = time.perf_counter()
        try:
            predictor = self.predictor(model)
            result = predictor.segment(pixels, min_object_px=self.settings.min_object_px)
        except ApplianceError as error:
            self._give_up(job, image, str(error))
            return
        if stat_key(path) != key or file_hash(path) != image.content_hash:
            # written on while it was read (a preallocated file, or a writer that keeps the mtime): forget the
            # version's stat so the detector registers what is there now as a new version
            self.store.update_image(image.id, size=-1, mtime_ns=-1)
            self._finish_without_result(job, image, JobStatus.SUPERSEDED, f"{path} changed while it was segmented")
            return
        files = self.result_paths(image)
        rows = write_results(
            files,
            pixels,
            result,
            class_names=predictor.class_names,
            image_name=image.relpath,
            pixel_size_um=predictor.pixel_size_um,
            min_object_px=self.settings.min_object_px,
        )
        fault_point("image-written")
        finished = self.store.finish_image(
            image.id,
            job.id,
            self.owner,
            rows=rows,
            model_id=model_id,
            mask_path=str(files.mask),
            overlay_path=str(files.overlay),
            processed_time=time.time(),
            error=None,
        )
        if finished:
            fault_point("image-finished")
            write_project_csv(self.store, self.settings.results, image.project)
            self.processed += 1
            self.log(
                f"segmented {image.project}/{image.relpath} with {model_id} "
                f"in {time.perf_counter() - started:.2f} s on {predictor.provider}"
            )

    def result_paths(self, image: Image) -> ResultFiles:
        """Where an image's results go: ``results/<project>/<stem>_mask.tif``, ``_overlay.png``, ``_objects.tif``
        and ``_objects.csv``, the stem being the image's relative path without its extension, kept by later
        versions of the same path and never shared with another path (see :func:`result_stem`)."""
        out_dir = self.settings.results / image.project
        previous = self.store.result_path_of(image.project, image.relpath)
        if previous is not None:
            return ResultFiles.of_mask(previous)

        def taken(stem: str) -> bool:
            mask_path = str(result_files(out_dir, stem).mask)
            return self.store.result_path_owner(image.project, mask_path) not in (None, image.relpath)

        return result_files(out_dir, result_stem(image.relpath, taken))

    def _finish_without_result(self, job: Job, image: Image, status: str, message: str) -> None:
        self.store.update_image(image.id, status=status, error=message)
        self.store.complete(job.id, self.owner, {"status": status})
        self.log(message)

    def _fail(self, job: Job, message: str) -> None:
        status = self.store.fail(job.id, self.owner, message, retry_after=self.settings.stable_seconds)
        image = self.store.image(job.key)
        where = f"image {image.project}/{image.relpath}" if image else f"job {job.id}"
        if status == JobStatus.FAILED and image:
            self.store.update_image(image.id, status=JobStatus.FAILED, error=message)
        verb = "not segmented" if status == JobStatus.FAILED else f"failed (attempt {job.attempts}), retried"
        self.store.event(None, f"{where} {verb}: {message}", level="error" if status == JobStatus.FAILED else "warning")
        self.log(readable(f"{where} {verb}: {message}"))

    def _give_up(self, job: Job, image: Image, message: str) -> None:
        self.store.update_image(image.id, status=JobStatus.FAILED, error=message)
        self.store.give_up(job.id, self.owner, message)
        self.store.event(None, f"image {image.project}/{image.relpath} not segmented: {message}", level="error")
        self.log(f"image {image.project}/{image.relpath} not segmented: {message}")
