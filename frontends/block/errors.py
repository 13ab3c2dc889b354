"""Errors a block frontend's caller sees when the backend refused a request."""

from __future__ import annotations

from ringkit import RingkitError
from ringkit.proto.blkif import Status


class BlockIOError(RingkitError):
    """The backend answered a request with BLKIF_RSP_ERROR (the I/O failed or the request was
    refused: out of range, read-only disk, bad grant...).

    `operation` is the blkif operation, `sector` the first 512-byte sector of the failed request
    and `status` the ``BLKIF_RSP_*`` value.
    """

    def __init__(self, message: str, *, operation: int, sector: int, status: int) -> None:
        super().__init__(message)
        self.operation = operation
        self.sector = sector
        self.status = status


class BlockNotSupportedError(BlockIOError):
    """The backend answered BLKIF_RSP_EOPNOTSUPP, or does not offer the feature at all."""

    def __init__(self, message: str, *, operation: int, sector: int = 0,
                 status: int = Status.EOPNOTSUPP) -> None:
        super().__init__(message, operation=operation, sector=sector, status=status)


class StaleReadError(BlockIOError):
    """A READ the backend answered BLKIF_RSP_OKAY left sectors of its pages unwritten.

    Raised only by a client created with ``verify_reads=True``: before such a read goes out,
    the first 8 bytes of every sector of its pages are stamped with a random canary, and a
    sector that still starts with it after the answer was not written by the backend.  This
    tells a backend that skipped (or misdirected) its writes from one that wrote wrong data,
    which the caller cannot tell from the bytes alone.

    `stale_sectors` are the disk sectors (512-byte units) whose data never arrived;
    `late_sectors` those whose data showed up in the pages only after the answer was seen
    (re-checked once after a short wait): data that lags its response points at ordering or
    visibility between the backend's writes and its response, data that never arrives at
    writes that went to other memory.  `pages` are the pool pages involved, as
    ``(pool index, grant ref)``.  The caller's buffer holds whatever the pages held.
    """

    def __init__(self, message: str, *, operation: int, sector: int,
                 stale_sectors: tuple[int, ...], late_sectors: tuple[int, ...],
                 pages: tuple[tuple[int, int], ...]) -> None:
        super().__init__(message, operation=operation, sector=sector, status=Status.OKAY)
        self.stale_sectors = stale_sectors
        self.late_sectors = late_sectors
        self.pages = pages


__all__ = ("BlockIOError", "BlockNotSupportedError", "StaleReadError")
