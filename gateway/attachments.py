"""Content-addressed, durable attachment files: ``<root>/<sha[:2]>/<sha>``."""

from __future__ import annotations

import asyncio
import errno
import hashlib
from pathlib import Path

from gateway.errors import StorageFull, TooLarge
from gateway.files import write_durably
from gateway.plugin.files import safe_filename
from intake_schemas import Attachment


class AttachmentStore:
    """Writes attachment bytes durably before the message that names them is committed."""

    def __init__(self, root: str | Path, *, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path_of(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    async def put(self, data: bytes, *, name: str, content_type: str) -> Attachment:
        """Store ``data`` (fsynced) and describe it; TooLarge above the configured limit."""
        if len(data) > self.max_bytes:
            raise TooLarge(f"attachment {safe_filename(name)!r} is {len(data)} bytes; "
                           f"the limit is {self.max_bytes} bytes", limit=self.max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        try:
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
