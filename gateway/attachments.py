"""Content-addressed, durable attachment files: ``<root>/<sha[:2]>/<sha>``, or in the shared
store (PostgreSQL ``blobs``) when replicas must all serve them."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path
from typing import Protocol

from gateway.errors import StorageFull, TooLarge
from gateway.files import write_durably
from gateway.plugin.files import safe_filename
from intake_schemas import Attachment


class BlobStore(Protocol):
    """Bytes by sha256 in a store every replica reaches (:class:`PostgresStore`)."""

    async def put_blob(self, sha256: str, data: bytes) -> None: ...

    async def get_blob(self, sha256: str) -> bytes | None: ...


class AttachmentStore:
    """Writes attachment bytes durably before the message that names them is committed.

    With ``blobs`` the bytes go to that shared store instead of ``root``: a message taken by
    one replica has its files served by every other.
    """

    def __init__(self, root: str | Path, *, max_bytes: int,
                 blobs: BlobStore | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.blobs = blobs

    async def read(self, sha256: str) -> bytes | None:
        """The bytes stored under ``sha256``, or None (never stored, or purged)."""
        if self.blobs is not None:
            return await self.blobs.get_blob(sha256)
        path = self.path_of(sha256)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    def path_of(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    async def put(self, data: bytes, *, name: str, content_type: str) -> Attachment:
        """Store ``data`` (fsynced) and describe it; TooLarge above the configured limit."""
        if len(data) > self.max_bytes:
            raise TooLarge(f"attachment {safe_filename(name)!r} is {len(data)} bytes; "
                           f"the limit is {self.max_bytes} bytes", limit=self.max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        try:
            if self.blobs is not None:
                await self.blobs.put_blob(digest, data)
            else:
                await asyncio.to_thread(self._write, digest, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("no room left on the attachment store's disk") from exc
            raise
        ctype = content_type.split(";")[0].strip().lower() or "application/octet-stream"
        return Attachment(name=safe_filename(name), content_type=ctype, size=len(data),
                          sha256=digest)

    def _write(self, digest: str, data: bytes) -> None:
        target = self.path_of(digest)
        if not target.exists():
            write_durably(target, data)
        else:
            # Stored again: its age (what purge goes by) starts again, for the newer message.
            os.utime(target)
