"""Where call recordings are kept: a local directory, or a bucket on any S3-compatible store.

A store names what it saved with a location string for the ledger, `file:///abs/path` or
`s3://bucket/key`, and reads it back from that. Keys are paths of "/"-separated parts made of
letters, digits, ".", "_" and "-", none starting with "."; anything else is refused, so that no key
(a call id with "../" in it) can reach outside a store's directory or prefix.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "LocalRecordingStore",
    "RecordingStore",
    "RecordingStoreError",
    "S3RecordingStore",
    "recording_store",
]

_KEY_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_ACCEPTED = "a directory (/path or file:///path) or s3://bucket[/prefix][?endpoint_url=URL&region=NAME]"


class RecordingStoreError(Exception):
    """A recording could not be saved or read; the message names the store and the location."""


class RecordingStore(Protocol):
    async def save(self, key: str, data: bytes, content_type: str) -> str:
        """Store data under key, replacing what was there; returns the location."""
        ...

    async def open(self, location: str) -> bytes:
        """The bytes saved at a location this store returned. Raises ValueError for a location
        outside this store, RecordingStoreError when it cannot be read (or is not there)."""
        ...

    async def link(self, location: str, expires_s: int) -> str | None:
        """A URL that fetches the recording without credentials for `expires_s` seconds; None
        for a store that has no such URLs (a local directory)."""
        ...


def _check_key(key: str) -> str:
    if not all(_KEY_PART.fullmatch(part) for part in key.split("/")):
        raise ValueError(
            f"recording key {key!r}: each '/'-separated part must be letters, digits, '.', '_' or '-', "
            "not empty and not starting with '.'"
        )
    return key


class LocalRecordingStore:
    """Files under `directory` (made when first needed). A save writes a temporary file beside the
    target and renames it over, so a reader sees the old recording or the new one, never part of one.
    Files are readable by the service's user only."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(os.path.abspath(directory))  # normalised: locations are compared to it

    async def save(self, key: str, data: bytes, content_type: str) -> str:
        path = self.directory / _check_key(key)
        try:
            await asyncio.to_thread(_write_atomically, path, data)
        except OSError as exc:
            raise RecordingStoreError(
                f"recording store {self.directory}: cannot write {path}: {exc}"
            ) from exc
        return path.as_uri()

    async def open(self, location: str) -> bytes:
        parts = urlsplit(location)
        path = Path(unquote(parts.path))
        if (
            parts.scheme != "file"
            or parts.netloc not in ("", "localhost")
            or not path.is_relative_to(self.directory)
        ):
            raise ValueError(f"recording location {location!r} is not in the store at {self.directory}")
        _check_key(path.relative_to(self.directory).as_posix())
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise RecordingStoreError(f"no recording at {location}") from exc
        except OSError as exc:
            raise RecordingStoreError(f"cannot read recording {location}: {exc}") from exc

    async def link(self, location: str, expires_s: int) -> str | None:
        return None  # the API streams a local recording itself


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A leading "." keeps the temporary file out of the key space: no key can name it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class S3RecordingStore:
    """Objects in `bucket` under `prefix`, on AWS or any S3-compatible store at `endpoint_url`
    (path-style addressing there, which MinIO and Ceph expect). Credentials are the explicit pair,
    or else boto3's usual chain (environment, config files, instance role).

    boto3 blocks, so every request runs in a thread, on one client made on first use (making it
    loads botocore's service model: tens of milliseconds that must not run on the loop).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 recording store: the bucket name is empty")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("S3 recording store: give both access_key_id and secret_access_key, or neither")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            _check_key(self.prefix)
        self.endpoint_url = endpoint_url
        self.region = region
        self._credentials = (access_key_id, secret_access_key)
        self._client: Any = None
        self._client_lock = threading.Lock()

    async def save(self, key: str, data: bytes, content_type: str) -> str:
        full_key = f"{self.prefix}/{_check_key(key)}" if self.prefix else _check_key(key)
        location = f"s3://{self.bucket}/{full_key}"

        def put() -> None:
            self._request(
                location, "put_object", Bucket=self.bucket, Key=full_key, Body=data, ContentType=content_type
            )

        await asyncio.to_thread(put)
        return location

    def _key(self, location: str) -> str:
        parts = urlsplit(location)
        key = parts.path.lstrip("/")
        if (
            parts.scheme != "s3"
            or parts.netloc != self.bucket
            or not key.startswith(f"{self.prefix}/" if self.prefix else "")
        ):
            raise ValueError(f"recording location {location!r} is not in s3://{self.bucket}/{self.prefix}")
        return _check_key(key)

    async def link(self, location: str, expires_s: int) -> str | None:
        """A presigned GET URL (signed here, no request made)."""
        key = self._key(location)

        def sign() -> str:
            params = {"Bucket": self.bucket, "Key": key}
            url: str = self._request(location, "generate_presigned_url", ClientMethod="get_object",
                                     Params=params, ExpiresIn=expires_s)  # fmt: skip
            return url

        return await asyncio.to_thread(sign)  # the first use builds the client: not on the loop

    async def open(self, location: str) -> bytes:
        key = self._key(location)

        def get() -> bytes:
            body = self._request(location, "get_object", Bucket=self.bucket, Key=key)["Body"]
            with body:
                data: bytes = body.read()
            return data

        return await asyncio.to_thread(get)

    def _request(self, location: str, operation: str, **params: Any) -> Any:
        """One S3 call, from a worker thread; botocore's errors become RecordingStoreError."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"at {self.endpoint_url}" if self.endpoint_url else "on AWS"
        try:
            return getattr(self._s3(), operation)(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            if code == "NoSuchBucket":
                raise RecordingStoreError(f"S3 bucket {self.bucket!r} does not exist {where}") from exc
            if code == "NoSuchKey":
                raise RecordingStoreError(f"no recording at {location}") from exc
            raise RecordingStoreError(
                f"S3 {operation} {location} {where} failed: {code} {error.get('Message', '')}".rstrip()
            ) from exc
        except BotoCoreError as exc:  # no credentials, endpoint unreachable...
            raise RecordingStoreError(f"S3 {operation} {location} {where} failed: {exc}") from exc

    def _s3(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import boto3  # only deployments that record to S3 pay for importing it
                from botocore.config import Config

                access_key_id, secret_access_key = self._credentials
                session = boto3.session.Session(
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret_access_key,
                    region_name=self.region,
                )
                addressing = {"addressing_style": "path"} if self.endpoint_url else {}
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    # SigV4: the deprecated SigV2 is what presigned URLs would otherwise use
                    config=Config(s3=addressing, retries={"mode": "standard"}, signature_version="s3v4"),
                )
            return self._client


def recording_store(url: str) -> RecordingStore:
    """The store a setting names: `/path` or `file:///path` (a local directory), or
    `s3://bucket[/prefix][?endpoint_url=URL&region=NAME]` (credentials from boto3's usual chain).
    Raises ValueError naming the problem and the accepted forms."""
    if url.startswith("/"):
        return LocalRecordingStore(url)
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or not parts.path.startswith("/"):
            raise ValueError(
                f"recording store {url!r}: a file URL is file:///absolute/path; expected {_ACCEPTED}"
            )
        return LocalRecordingStore(unquote(parts.path))
    if parts.scheme == "s3":
        unknown = sorted(set(query) - {"endpoint_url", "region"})
        repeated = sorted(name for name, values in query.items() if len(values) > 1)
        problem = ""
        if not parts.netloc:
            problem = "no bucket"
        elif unknown:
            problem = f"unknown option(s) {unknown}"
        elif repeated:
            problem = f"option(s) given more than once {repeated}"
        if problem:
            raise ValueError(f"recording store {url!r}: {problem}; expected {_ACCEPTED}")
        return S3RecordingStore(
            parts.netloc,
            parts.path,
            endpoint_url=query.get("endpoint_url", [None])[0] or None,
            region=query.get("region", [None])[0] or None,
        )
    raise ValueError(f"recording store {url!r}: expected {_ACCEPTED}")
