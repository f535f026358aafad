# A writer op of the stress harness: writes `len` bytes of `byte` at `offset` of an existing
# file through a shared writable mapping. With msync=1 the pages are flushed before the mapping
# goes; with msync=0 they stay dirty in the kernel's page cache (the kernel writes them back on
# its own schedule, as WRITE requests twinfs sees much later).
import mmap, os, sys

path, offset, length, byte, msync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1'
fd = os.open(path, os.O_RDWR)
try:
    size = os.fstat(fd).st_size
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[offset:offset + length] = bytes([byte]) * length
    if msync:
        m.flush()
    m.close()
finally:
    os.close(fd)
