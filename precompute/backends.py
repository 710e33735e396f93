"""joblib backends for the shard jobs: ``loky`` and ``threading`` here, ``dask`` and ``ray`` on a cluster.

``joblib_backend`` makes one of them joblib's current backend for a run; the driver
(``precompute.run``) then runs the same ``Parallel`` call whatever the backend.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator

from melshards.errors import ConfigError

BACKENDS = ("loky", "threading", "dask", "ray")
LOCAL_BACKENDS = ("loky", "threading")

# The module each cluster backend imports, and the package that provides it.
_CLUSTER_PACKAGES = {"dask": ("dask.distributed", "dask[distributed]"), "ray": ("ray.util.joblib", "ray")}


def check_backend(backend: str, *, scheduler: str | None = None) -> None:
    """Refuse an unknown backend, a cluster address without a cluster backend, a missing package.

    Called before planning, so a run fails in a second and not after reading a large manifest.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if scheduler and backend not in _CLUSTER_PACKAGES:
        raise ConfigError(f"--scheduler/--address {scheduler!r} needs --backend dask or ray, not {backend!r}")
    if backend in _CLUSTER_PACKAGES:
        module, package = _CLUSTER_PACKAGES[backend]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                f"backend {backend!r} needs {package}, which is not installed here: "
                f"pip install '{package}'  (the project's [{backend}] extra)"
            ) from None


@contextlib.contextmanager
def joblib_backend(backend: str, *, jobs: int | None, tasks: int, scheduler: str | None) -> Iterator[int]:
    """Make ``backend`` joblib's current backend; yields the ``n_jobs`` to pass to ``Parallel``.

    ``jobs``: parallel shard jobs, None for every core of this machine (local backends) or
    of the cluster joined; never more than ``tasks``.
    """
    from joblib import parallel_config

    check_backend(backend, scheduler=scheduler)
    local = max(1, min(jobs or os.cpu_count() or 1, tasks))
    if backend == "dask":
        with _dask_client(scheduler, workers=local), parallel_config(backend="dask"):
            # joblib's dask backend runs on every worker thread of the cluster, whatever n_jobs says.
            yield -1
    elif backend == "ray":
        with _ray_cluster(scheduler, cpus=local) as cluster_cpus, parallel_config(backend=_RAY_BACKEND):
            yield max(1, min(jobs or cluster_cpus, tasks))
    else:
        with parallel_config(backend=backend, n_jobs=local):
            yield local


@contextlib.contextmanager
def _dask_client(scheduler: str | None, *, workers: int) -> Iterator[None]:
    """A Dask client, current in this context: joined to ``scheduler``, or to a ``LocalCluster``
    of ``workers`` single-threaded processes that is stopped on exit."""
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler is None:
        # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers, which turns off
        # glibc's adaptive thresholds: every large numpy temporary is then a fresh mmap, and a
        # shard takes twice the CPU (measured: 1.7 s against 0.8 s). Unset it for our own
        # workers, and undo the variables the nannies leave in this process's environment.
        environ = dict(os.environ)
        try:
            with (
                dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
                LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
                ) as cluster,
                Client(cluster),
            ):
                yield
        finally:
            for key in set(os.environ) - set(environ):
                del os.environ[key]
            os.environ.update(environ)
        return
    try:
        client = Client(scheduler)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({err})") from None
    with client:
        yield


@contextlib.contextmanager
def _ray_cluster(address: str | None, *, cpus: int) -> Iterator[int]:
    """Ray joined at ``address``, or started here with ``cpus`` CPUs; yields the cluster's CPUs.

    Ray is shut down on exit unless it was already running in this process.
    """
    import ray

    _register_streaming_ray()
    started = not ray.is_initialized()
    if started and address is None:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    elif started:
        try:
            ray.init(address=address)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ConfigError(f"--address {address}: cannot join a Ray cluster there ({err})") from None
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        if started:
            ray.shutdown()


_RAY_BACKEND = "melshards-ray"


def _register_streaming_ray() -> None:
    """Register Ray's joblib backend, declaring that it can stream results.

    joblib refuses ``return_as="generator_unordered"`` for backends built on
    ``multiprocessing.Pool``, because the standard library pool's callback thread can
    deadlock; Ray's joblib backend inherits that refusal, although its pool is a pool of Ray
    actors with its own result thread. Streaming is what lets the progress bar count finished
    slices, so this subclass declares it (tested: results arrive as shards finish, and a
    worker's exception stops the run).
    """
    from joblib import register_parallel_backend
    from ray.util.joblib.ray_backend import RayBackend

    class StreamingRayBackend(RayBackend):
        supports_return_generator = True

    register_parallel_backend(_RAY_BACKEND, StreamingRayBackend)
