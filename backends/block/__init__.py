"""The blkif block backend: serves a raw image file or block device to a frontend domain."""
