"""A job's calls to the cluster's one GalleryWriter (storage.gallery_writer): retried while the writer
restarts after its node went, and read out of Ray's wrapper when they fail."""

from __future__ import annotations

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
from tenacity import Retrying, retry_if_exception, wait_exponential

from storage.errors import GalleryUnopenable, Unavailable

# How long a job waits for its gallery writer to come back when the writer's node is lost: Ray restarts
# the writer once a node its label selector allows is there (KubeRay replaces a lost pod in about a
# minute). Past it, the rows are the job's errors and a rerun stores them.
WRITER_WAIT_S = 300.0


def cause(exc: BaseException) -> BaseException:
    """The exception an actor raised, out of Ray's wrapper."""
    return exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc


def check_writer(ready) -> None:
    """Raise a job-level error when the GalleryWriter could not open the gallery table."""
    try:
        ray.get(ready, timeout=60)
    except ActorDiedError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise Unavailable(f"the gallery could not be opened ({lines[-1] if lines else 'its writer died'})") from exc
    except Exception as exc:  # noqa: BLE001 - the writer is fine or busy: the original error is the one to report
        if isinstance(cause(exc), GalleryUnopenable):  # a writer that was there already, on another table
            raise Unavailable(cause(exc).message) from exc
        return


def writer_call(method, *args):
    """`ray.get(method.remote(*args))` on the gallery writer; a busy table, or a writer restarting after
    its node went, is retried (each commit is idempotent: a row's key is its user and content hash)."""

    def transient(exc: BaseException) -> bool:
        return isinstance(cause(exc), (Unavailable, ActorDiedError, ActorUnavailableError))

    def stop(state) -> bool:
        # A writer that died for good (it could not open the table) answers ActorDiedError at once,
        # every time: a few tries tell it from a restart. Unreachable or busy: up to WRITER_WAIT_S.
        died = isinstance(cause(state.outcome.exception()), ActorDiedError)
        return state.seconds_since_start > WRITER_WAIT_S or (died and state.attempt_number >= 4)

    for attempt in Retrying(retry=retry_if_exception(transient), stop=stop,
                            wait=wait_exponential(multiplier=0.2, max=5), reraise=True):
        with attempt:
            return ray.get(method.remote(*args))
    raise AssertionError("unreachable")
