"""Artifact stores: where a study's tickets live, reachable by every worker and inspector.

A location is a folder (a shared filesystem when workers run on several machines) or
``s3://BUCKET/PREFIX`` (any S3-compatible store, through Optuna's ``Boto3ArtifactStore``; boto3
reads the endpoint and credentials from its usual environment variables and files, e.g.
``AWS_ENDPOINT_URL``). A study records the location it was created with (user attribute
``artifacts``), so ``show``, ``export`` and the final pick find the tickets with no flag, from
any machine. A journal storage keeps today's default: ``NAME.artifacts/`` beside the file.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.trial import FrozenTrial

from hwsparse.errors import InputError
from hwsparse.storage import Storage
from hwsparse.tickets import META_FILE, WEIGHTS_FILE

ATTR = "artifacts"  # the study's user attribute naming its location
ArtifactStore = Any  # optuna.artifacts' stores; that module is imported when first used, as it
# imports boto3 (and urllib3, which changes warning filters) whenever boto3 is installed


def normalize(text: str) -> str:
    """A location as a study records it: ``s3://BUCKET[/PREFIX]`` as given (without a trailing
    slash), a folder as an absolute path."""
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise InputError(
                f"--artifacts {text!r} names no bucket; valid: DIR or s3://BUCKET/PREFIX"
            )
        return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
    if "://" in text:
        raise InputError(f"--artifacts {text!r}: valid are a folder or s3://BUCKET/PREFIX")
    return str(Path(text).expanduser().resolve())


def choose(storage: Storage, text: str | None) -> Storage:
    """``storage`` with the location the user gave (``--artifacts``), when given."""
    if text is None:
        return storage
    return replace(storage, artifacts=normalize(text), artifacts_chosen=True)


class _PrefixedS3:
    """Optuna's ``Boto3ArtifactStore`` with every key under ``prefix/`` of the bucket."""

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3
        from optuna.artifacts import Boto3ArtifactStore

        self.store = Boto3ArtifactStore(bucket, client=boto3.client("s3"))
        self.prefix = f"{prefix}/" if prefix else ""

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)


def open_store(location: str) -> ArtifactStore:
    """The artifact store of a location (a folder is created when missing)."""
    if location.startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            raise InputError(
                f"--artifacts {location} needs boto3: pip install 'hwsparse[s3]'"
            ) from None
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        return _PrefixedS3(bucket, prefix)
    from optuna.artifacts import FileSystemArtifactStore

    Path(location).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(location)


def upload(store: ArtifactStore, path: Path, trial: optuna.Trial) -> str:
    """Upload the file ``path`` as an artifact of ``trial``; returns its artifact id."""
    from optuna.artifacts import upload_artifact

    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


def check_writable(location: str) -> None:
    """Write and remove a probe: a location that cannot be written is refused before a study
    or a trial depends on it."""
    probe = f".hwsparse-probe-{uuid.uuid4().hex}"
    try:
        store = open_store(location)
        store.write(probe, io.BytesIO(b"probe"))
        store.remove(probe)
    except InputError:
        raise
    except Exception as exc:  # OSError, botocore's ClientError / EndpointConnectionError
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [""])[0]
        raise InputError(
            f"cannot write artifacts to {location}: {reason or type(exc).__name__}"
        ) from None


def for_new_study(storage: Storage) -> str:
    """The location a study created now records: ``--artifacts``, else the storage's default
    (a server storage has none: its machines need one they all reach)."""
    if not storage.artifacts:
        raise InputError(
            f"a study on {storage.shown} is shared by machines: give --artifacts DIR (a folder "
            "every worker mounts) or --artifacts s3://BUCKET/PREFIX when you create it"
        )
    return storage.artifacts


def of_study(study: optuna.Study, storage: Storage) -> str:
    """Where ``study`` keeps its tickets (what it recorded; studies from before this record
    use the storage's default). A location the user gave (``--artifacts``) must be the
    study's."""
    recorded = study.user_attrs.get(ATTR)
    if recorded is None:
        if not storage.artifacts:
            raise InputError(f"study {study.study_name!r} records no artifact location")
        return storage.artifacts
    if storage.artifacts_chosen and storage.artifacts != recorded:
        raise InputError(
            f"study {study.study_name!r} keeps its tickets in {recorded}, not "
            f"{storage.artifacts}; drop --artifacts (the study knows its location)"
        )
    return str(recorded)


def fetch_ticket(study: optuna.Study, trial: FrozenTrial, storage: Storage, folder: Path) -> Path:
    """Download a trial's ticket files into ``folder``."""
    from optuna.artifacts import FileSystemArtifactStore, download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    location = of_study(study, storage)
    store = open_store(location) if location.startswith("s3://") else None
    if store is None:  # a folder: read it, never create it
        store = FileSystemArtifactStore(location)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, WEIGHTS_FILE):
        artifact = trial.user_attrs.get(f"artifact:{name}")
        if artifact is None:
            raise InputError(
                f"trial {trial.number} has no saved ticket (state {trial.state.name})"
            )
        target = folder / name
        target.unlink(missing_ok=True)
        try:
            download_artifact(artifact_store=store, file_path=str(target), artifact_id=artifact)
        except (ArtifactNotFound, OSError) as exc:  # missing folder or object, moved storage
            raise InputError(
                f"ticket of trial {trial.number} not found in {location}: {exc}"
            ) from None
        except Exception as exc:  # botocore: unreachable endpoint, no credentials
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"cannot read the ticket of trial {trial.number} from {location}: {line}"
            ) from None
    return folder
