"""The media bucket: staging and output objects, and presigned download URLs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

InputName = Literal["image", "mask"]


def preview_key(outputs_prefix: str, tenant: str, job_id: str) -> str:
    """Where a job's progress preview lives: beside its outputs (same prefix, same lifecycle expiry), one object
    per job, overwritten by each newer preview, deleted when the job is cancelled."""
    return f"{outputs_prefix}{tenant}/{job_id}/preview.jpg"


def upload_key(uploads_prefix: str, tenant: str, upload_id: str) -> str:
    """Where an upload lives: under its tenant's own folder, so one tenant's id never names another's file."""
    return f"{uploads_prefix}{tenant}/{upload_id}"


def input_key(outputs_prefix: str, tenant: str, job_id: str, name: InputName) -> str:
    """Where a job's normalised input PNG lives (``image`` or ``mask``): beside its outputs, expiring with them."""
    return f"{outputs_prefix}{tenant}/{job_id}/input-{name}.png"


class ObjectTooLarge(Exception):
    """An object holds more bytes than the reader allows."""


@dataclass(frozen=True)
class PresignedPost:
    """A browser-style upload form: POST ``fields`` and then the file (as ``file``) to ``url``."""

    url: str
    fields: dict[str, Any]


class MediaStore:
    """Adapter over the one S3 bucket holding staging images and final outputs."""

    def __init__(self, s3: S3Client, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def presign_get(self, key: str, expires_s: int) -> str:
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )

    def presign_post(self, key: str, *, max_bytes: int, content_type_prefix: str, expires_s: int) -> PresignedPost:
        """A presigned POST for exactly ``key``: S3 refuses a file over ``max_bytes``, one whose Content-Type does
        not start with ``content_type_prefix``, and any POST after ``expires_s``."""
        post = self._s3.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Conditions=[["content-length-range", 1, max_bytes], ["starts-with", "$Content-Type", content_type_prefix]],
            ExpiresIn=expires_s,
        )
        return PresignedPost(url=post["url"], fields=dict(post["fields"]))

    def get_bounded(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes, reading at most ``max_bytes + 1`` of them; ObjectTooLarge past ``max_bytes``, the
        ``missing_errors`` for an absent key."""
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{max_bytes}")["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":  # an empty object has no byte 0
                return b""
            raise
        if len(body) > max_bytes:
            raise ObjectTooLarge(key)
        return body

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def missing_errors(self) -> tuple[type[Exception], ...]:
        """The exceptions ``get`` raises for an absent key."""
        return (self._s3.exceptions.NoSuchKey,)

    def delete(self, keys: list[str]) -> None:
        if keys:
            self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
