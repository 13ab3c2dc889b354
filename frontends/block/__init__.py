"""The blkif block frontend: async byte-range I/O on a disk a backend domain serves."""
