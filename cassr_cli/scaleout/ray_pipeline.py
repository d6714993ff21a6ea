"""``cassr upscale --ray ADDRESS``: the batch as a Ray Data streaming pipeline.

    read (CPU tasks) → upscale (actor pool: one pipeline per GPU, or CPU actors) → atomic write (CPU tasks)

The driver plans the batch, skips finished outputs (resumable), checks that every node sees the sources
and DEST at the same paths (a shared file system is required), and prints each image's record as it
streams back, exactly as a local run does. Each actor holds one copy of the models. Before computing an
image an actor claims its output (``io/claims.py``, with this run's id): other cassr processes on the same
DEST skip it, and a retry of a task whose actor died takes the claim over at once. The write task
releases the claim after the atomic rename. Ray restarts a dead actor and retries its task
(``max_restarts``, ``max_task_retries``); an image whose task keeps failing is reported as failed, the
batch goes on.

Addresses: ``local`` starts a Ray instance on this machine for the run, ``auto`` joins the running
cluster (``ray start`` / ``ray up`` / KubeRay), ``ray://host:port`` connects through Ray Client. A Ray
Client process cannot drive Ray Data itself, so then a small actor in the cluster drives the pipeline
and the records are relayed. In a process where Ray is already initialised (the Python API), that
connection is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cassr_cli.config import UpscaleConfig
from cassr_cli.errors import CassrError, EnvironmentNotReadyError
from cassr_cli.io.claims import IN_PROGRESS_ELSEWHERE, Claims, release_claim, sweep
from cassr_cli.io.discover import InputItem
from cassr_cli.io.naming import PlannedOutput
from cassr_cli.runner import BatchEvents, BatchPlan, BatchSummary, ImageResult, NullEvents, PipelineFactory
from cassr_cli.runner.records import OUTPUT_EXISTS, begin_batch

if TYPE_CHECKING:
    import numpy as np

    from cassr_cli.io.image import DecodedImage

logger = logging.getLogger(__name__)

ATTEMPTS = 3
"""Attempts at one image whose actor keeps dying (Ray retries the task; the claim counts the attempts),
so a poison image fails instead of killing actors forever."""

LOST = "its Ray worker died while processing it, {n} times (see the Ray logs); rerun to try again"


def run_batch_on_ray(
    plan: BatchPlan,
    config: UpscaleConfig,
    *,
    events: BatchEvents | None = None,
    progress: bool = False,
    pipeline_factory: PipelineFactory | None = None,
    actors: int | None = None,
    driver_in_cluster: bool | None = None,
) -> BatchSummary:
    """Process a planned batch on the Ray cluster ``config.ray`` names.

    Args:
        progress: show Ray Data's progress (on a terminal); otherwise Ray stays quiet on stderr.
        pipeline_factory: builds each actor's pipeline (default: the models ``config`` names); must be
            picklable.
        actors: size of the actor pool (default: one per GPU in the cluster, else one per two CPUs).
        driver_in_cluster: drive the pipeline from an actor in the cluster and relay its records here
            (default: when connected through Ray Client, which cannot drive Ray Data itself).

    Raises:
        EnvironmentNotReadyError: Ray is not installed, the cluster cannot be reached, or a node cannot
            see the sources or DEST (exit 3).
    """
    events = events or NullEvents()
    summary, todo = begin_batch(plan, config, events)
    if not todo:
        return summary
    ray = _import_ray()
    if pipeline_factory is None:  # missing weights fail here (exit 3), not in every actor
        from cassr_cli.engine.components import resolve_model_paths

        resolve_model_paths(config)
    config = _absolute_paths(config)
    dest = plan.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    sweep(sorted({p.output.resolve().parent for p in todo}), Claims())
    with _connected(ray, config.ray or "local", progress=progress):
        _check_nodes_see(ray, todo[0].item.path.resolve(), dest)
        rows = [_row(i, planned, config) for i, planned in enumerate(todo)]
        job = (rows, config, uuid.uuid4().hex, pipeline_factory, actors)
        in_cluster = _through_ray_client(ray) if driver_in_cluster is None else driver_in_cluster
        stream = _relayed(ray, *job) if in_cluster else _streamed(ray, *job, progress=progress)
        reported: set[int] = set()
        try:
            for index, record in _unwrapped(stream):
                result = ImageResult.from_json(json.loads(record))
                reported.add(index)
                summary.results.append(result)
                events.image_finished(result)
                if config.fail_fast and result.status == "failed":
                    return summary
        except KeyboardInterrupt:
            summary.interrupted = True
            return summary
        finally:
            stream.close()
        for index, planned in enumerate(todo):
            if index not in reported:  # every retry of its task failed
                lost = ImageResult(str(planned.item.path), None, "failed", error=LOST.format(n="several"))
                summary.results.append(lost)
                events.image_finished(lost)
    return summary


def _absolute_paths(config: UpscaleConfig) -> UpscaleConfig:
    """Model and weights paths as absolute paths: workers do not run in the driver's folder."""
    changes = {}
    for key in ("activation", "base_model", "adapter", "weights_dir"):
        value = getattr(config, key)
        if value and Path(value).expanduser().exists():
            changes[key] = str(Path(value).expanduser().resolve())
    return config.replace(**changes) if changes else config


def _unwrapped(stream: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """The records of ``stream``; a cassr error raised in a worker (weights missing on a node, a
    broken GPU) surfaces as itself (exit 3), anything else as an environment error naming Ray."""
    try:
        yield from stream
    except (KeyboardInterrupt, CassrError):
        raise
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, CassrError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(cause, CassrError):
            raise EnvironmentNotReadyError(cause.message, hint=cause.hint) from err
        raise EnvironmentNotReadyError(
            f"the Ray pipeline failed: {type(err).__name__}: {err}".splitlines()[0],
            hint="see the Ray logs (/tmp/ray/session_latest/logs on the nodes); rerun to resume",
        ) from err
    finally:
        stream.close()


def _streamed(
    ray: Any,
    rows: list[dict[str, Any]],
    config: UpscaleConfig,
    run: str,
    pipeline_factory: PipelineFactory | None,
    actors: int | None,
    *,
    progress: bool,
) -> Iterator[tuple[int, str]]:
    """``(row index, JSON record)`` per image, as the pipeline finishes them (this process drives)."""
    with _data_context(ray, progress=progress):
        for row in _pipeline(ray, rows, config, run, pipeline_factory, actors).iter_rows():
            yield int(row["index"]), str(row["record"])


def _relayed(ray: Any, *job: Any) -> Iterator[tuple[int, str]]:
    """The same records, with the pipeline driven by an actor inside the cluster: a Ray Client process
    cannot drive Ray Data itself. Records are fetched in batches; closing the iterator (Ctrl-C, a
    failure with --fail-fast) stops the driver actor and with it the pipeline."""
    driver = ray.remote(num_cpus=0, max_concurrency=2)(ClusterDriver).remote()
    try:
        ray.get(driver.start.remote(*job))
        taken = 0
        while True:
            records, done, error = ray.get(driver.take.remote(taken))
            taken += len(records)
            yield from records
            if done and not records:
                if error:
                    raise EnvironmentNotReadyError(f"the Ray pipeline failed in the cluster: {error}")
                return
            if not records:
                time.sleep(0.2)
    finally:
        ray.kill(driver)


class ClusterDriver:
    """Drives the pipeline on a cluster node for a Ray Client session and keeps its records."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._records: list[tuple[int, str]] = []
        self._done = False
        self._error: str | None = None

    def start(self, *job: Any) -> None:
        import threading

        threading.Thread(target=self._drive, args=job, name="cassr-ray-driver", daemon=True).start()

    def take(self, start: int) -> tuple[list[tuple[int, str]], bool, str | None]:
        """Records from number ``start`` on, whether the pipeline is done, and its error if it failed."""
        with self._lock:
            return self._records[start:], self._done, self._error

    def _drive(self, *job: Any) -> None:
        import ray

        try:
            for record in _streamed(ray, *job, progress=False):
                with self._lock:
                    self._records.append(record)
        except Exception as err:  # handed to the client, which reports it
            with self._lock:
                self._error = f"{type(err).__name__}: {err}"
        finally:
            with self._lock:
                self._done = True


def _through_ray_client(ray: Any) -> bool:
    with contextlib.suppress(Exception):
        return bool(ray.util.client.ray.is_connected())
    return False


# --- connection and checks ---------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EnvironmentNotReadyError(
            "--ray needs Ray, which is not installed", hint="pip install 'cassr[ray]'"
        ) from None
    return ray


@contextlib.contextmanager
def _connected(ray: Any, address: str, *, progress: bool) -> Iterator[None]:
    """Connect to (or start) the cluster unless this process already is connected; disconnect after."""
    if ray.is_initialized():
        yield
        return
    level = logging.INFO if progress else logging.ERROR
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, logging_level=level)
        else:
            ray.init(address=address, logging_level=level)
    except (ConnectionError, RuntimeError, ValueError) as err:
        hint = (
            "start one with `ray start --head` (or `ray up`), or use --ray local"
            if address == "auto"
            else "check the address; Ray Client needs `ray start --head --ray-client-server-port=10001`"
        )
        raise EnvironmentNotReadyError(f"cannot connect to the Ray cluster at {address!r}: {err}", hint=hint) from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_nodes_see(ray: Any, sample: Path, dest: Path) -> None:
    """Every alive node must read ``sample`` (an input) and write into ``dest`` at the same paths."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_paths)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pending = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(sample), str(dest))
        for n in nodes
    ]
    for host, problem in ray.get(pending, timeout=120):
        if problem:
            raise EnvironmentNotReadyError(
                f"the Ray node {host} {problem}",
                hint="with --ray, the sources and DEST must be on a file system every node mounts at the same "
                "path (NFS, a parallel file system, a shared volume in Kubernetes)",
            )


def _probe_paths(sample: str, dest: str) -> tuple[str, str | None]:
    """On one node: ``(host name, what is wrong or None)``."""
    host = socket.gethostname()
    if not os.access(sample, os.R_OK):
        return host, f"cannot read {sample}"
    if not (os.path.isdir(dest) and os.access(dest, os.W_OK)):
        return host, f"cannot write into {dest}"
    return host, None


@contextlib.contextmanager
def _data_context(ray: Any, *, progress: bool) -> Iterator[None]:
    """Ray Data settings for one run: progress bars only when asked, and a task whose retries are used up
    drops its image (reported as failed) instead of stopping the whole batch."""
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.max_errored_blocks)
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    context.enable_progress_bars = progress
    context.max_errored_blocks = -1
    if not progress:
        data_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, context.max_errored_blocks = saved
        data_logger.setLevel(saved_level)


# --- the pipeline ----------------------------------------------------------------------------------------


def _pipeline(
    ray: Any,
    rows: list[dict[str, Any]],
    config: UpscaleConfig,
    run: str,
    pipeline_factory: PipelineFactory | None,
    actors: int | None,
) -> Any:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if actors is None:
        actors = gpus if gpus else max(1, int(resources.get("CPU", 1)) // 2)
    placement: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    # Ray gives each actor its GPU (as cuda:0 inside the actor) and each actor one device: a list means its kind.
    if config.device.startswith("cuda:"):
        actor_config = config.replace(device="cuda")
    elif "," in config.device:
        actor_config = config.replace(device=config.devices[0])
    else:
        actor_config = config
    # Fault tolerance is Ray Data's default: dead actors are restarted and their tasks retried; tasks
    # are retried when their worker dies. The Upscaler gives up on an image after ATTEMPTS.
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    dataset = dataset.map(_read_row, num_cpus=0.5)
    dataset = dataset.map(
        Upscaler,
        fn_constructor_kwargs={"config": actor_config, "run": run, "factory": pipeline_factory},
        compute=ray.data.ActorPoolStrategy(size=actors),
        **placement,
    )
    return dataset.map(_write_row, num_cpus=0.5)


def _row(index: int, planned: PlannedOutput, config: UpscaleConfig) -> dict[str, Any]:
    """One image as a row: the user's spelling for the record, absolute paths for the workers."""
    return {
        "max_pixels": config.max_pixels,
        "quality": config.quality,
        "index": index,
        "input": str(planned.item.path),
        "output": str(planned.output),
        "source": str(planned.item.path.resolve()),
        "target": str(planned.output.resolve()),
        "relative": str(planned.item.relative),
        "fmt": planned.fmt,
        "record": "",
    }


def _planned(row: dict[str, Any]) -> PlannedOutput:
    item = InputItem(path=Path(row["source"]), relative=PurePosixPath(row["relative"]), source="")
    return PlannedOutput(item=item, output=Path(row["target"]), fmt=row["fmt"])


def _result(row: dict[str, Any], status: str, *, error: str | None = None, seconds: float = 0.0,
            stats: dict[str, Any] | None = None) -> str:  # fmt: skip
    output = row["output"] if status != "failed" else None
    result = ImageResult(row["input"], output, status, seconds=seconds, error=error, stats=stats or {})  # type: ignore[arg-type]
    return json.dumps(result.to_json())


def _stdout_to_stderr() -> None:
    """In a Ray worker: anything written to stdout goes to stderr, so the driver's stdout (which Ray
    fills with the workers' stdout) carries only cassr's records."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(2, 1)


def _read_row(row: dict[str, Any]) -> dict[str, Any]:
    """Read stage (CPU task): decode the image; a bad file becomes its failed record."""
    from cassr_cli.io.image import read_image
    from cassr_cli.runner.per_image import describe_failure

    _stdout_to_stderr()
    start = time.perf_counter()
    try:
        decoded = read_image(Path(row["source"]), max_pixels=int(row["max_pixels"]))
    except Exception as err:  # per-image policy, as in a local run
        return {**_empty_image(), **row, "record": _result(row, "failed", error=describe_failure(err, Path(row["source"])))}
    return {**row, **_pack(decoded), "read_seconds": time.perf_counter() - start}


class Upscaler:
    """Upscale stage (one actor per GPU, or a CPU actor): holds one pipeline; claims each output, computes
    it and hands pixels and claim on to the write stage."""

    def __init__(self, config: UpscaleConfig, run: str, factory: PipelineFactory | None) -> None:
        from cassr_cli.runner.batch import default_pipeline_factory

        _stdout_to_stderr()
        self.config = config
        self.claims = Claims(run=run).__enter__()  # renews claims until the writer releases them
        self.pipeline = (factory or default_pipeline_factory)(config)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from cassr_cli.runner import upscale_decoded
        from cassr_cli.runner.per_image import describe_failure, stop_on_device_failure

        if row["record"]:  # failed to read
            return row
        planned = _planned(row)
        try:
            claim = self.claims.acquire(planned.output)
        except OSError as err:  # DEST not writable or full: this image fails, the batch goes on
            error = f"cannot claim {row['output']}: {err.strerror or err}"
            return {**row, **_empty_image(), "record": _result(row, "failed", error=error)}
        if claim is None:
            return {**row, **_empty_image(), "record": _result(row, "skipped", error=IN_PROGRESS_ELSEWHERE)}
        if claim.owner.attempt > ATTEMPTS:  # the actors of the earlier attempts died on this image
            self.claims.release(claim)
            return {**row, **_empty_image(), "record": _result(row, "failed", error=LOST.format(n=ATTEMPTS))}
        if planned.output.exists() and not self.config.overwrite:  # written by another process meanwhile
            self.claims.release(claim)
            return {**row, **_empty_image(), "record": _result(row, "skipped", error=OUTPUT_EXISTS)}
        start = time.perf_counter()
        try:
            decoded = _unpack(row)
            rgb, alpha, stats = upscale_decoded(decoded, row["relative"], self.config, self.pipeline)
        except EnvironmentNotReadyError:
            self.claims.release(claim)
            raise
        except Exception as err:  # per-image policy, as in a local run
            self.claims.release(claim)
            stop_on_device_failure(err)
            return {**row, **_empty_image(), "record": _result(row, "failed", error=describe_failure(err, planned.item.path),
                                                               seconds=time.perf_counter() - start)}  # fmt: skip
        stats["read"] = {"seconds": row.get("read_seconds", 0.0)}
        self.claims.hand_off(claim)
        out = {**row, **_pack_pixels(rgb, alpha), "token": claim.owner.token}
        out["stats"] = json.dumps(stats)
        out["seconds"] = time.perf_counter() - start
        return out


def _write_row(row: dict[str, Any]) -> dict[str, Any]:
    """Write stage (CPU task): encode, write atomically, release the claim; returns the record."""
    from cassr_cli.io.image import encode_image, write_atomic
    from cassr_cli.runner.per_image import describe_failure

    _stdout_to_stderr()
    if row["record"]:
        return {"index": row["index"], "record": row["record"]}
    start = time.perf_counter()
    stats = json.loads(row["stats"])
    try:
        data = encode_image(
            row["rgb"], row["alpha"] if row["alpha"].size else None, fmt=row["fmt"], bit_depth=int(row["bit_depth"]),
            is_gray=bool(row["is_gray"]), quality=int(row["quality"]), icc_profile=row["icc"] or None, exif=row["exif"] or None,
        )  # fmt: skip
        write_atomic(Path(row["target"]), data)
    except Exception as err:
        record = _result(row, "failed", error=describe_failure(err, Path(row["source"])), seconds=float(row["seconds"]))
        return {"index": row["index"], "record": record}
    finally:
        release_claim(Path(row["target"]), row["token"])
    stats["write"] = {"seconds": time.perf_counter() - start}
    record = _result(row, "ok", seconds=float(row["seconds"]) + stats["write"]["seconds"], stats=stats)
    return {"index": row["index"], "record": record}


# --- rows carry images as arrays ---------------------------------------------------------------------------


def _empty_image() -> dict[str, Any]:
    import numpy as np

    return {
        "rgb": np.zeros((0, 0, 3), np.float32), "alpha": np.zeros((0, 0), np.float32), "bit_depth": 8,
        "is_gray": False, "source_format": "", "icc": b"", "exif": b"", "token": "", "stats": "{}", "seconds": 0.0,
    }  # fmt: skip


def _pack(decoded: DecodedImage) -> dict[str, Any]:
    import numpy as np

    return {
        "rgb": decoded.rgb,
        "alpha": decoded.alpha if decoded.alpha is not None else np.zeros((0, 0), np.float32),
        "bit_depth": decoded.bit_depth,
        "is_gray": decoded.is_gray,
        "source_format": decoded.source_format,
        "icc": decoded.icc_profile or b"",
        "exif": decoded.exif or b"",
    }


def _unpack(row: dict[str, Any]) -> DecodedImage:
    import numpy as np

    from cassr_cli.io.image import DecodedImage

    return DecodedImage(  # copies: arrays from Ray's object store are read-only
        rgb=np.array(row["rgb"]),
        alpha=np.array(row["alpha"]) if row["alpha"].size else None,
        is_gray=bool(row["is_gray"]),
        bit_depth=int(row["bit_depth"]),
        source_format=row["source_format"],
        icc_profile=row["icc"] or None,
        exif=row["exif"] or None,
    )


def _pack_pixels(rgb: np.ndarray, alpha: np.ndarray | None) -> dict[str, Any]:
    import numpy as np

    return {"rgb": rgb, "alpha": alpha if alpha is not None else np.zeros((0, 0), np.float32)}

