# A writer op of the stress harness: writes `len` bytes of `byte` at `offset` of an existing
# file through a shared writable mapping. With msync=1 the pages are flushed before the mapping
# goes; with msync=0 they stay dirty in the kernel's page cache (the kernel writes them back on
# its own schedule, as WRITE requests twinfs sees much later).
# With hold_ms > 0 (and no msync) it prints "written" once the bytes are in the mapping and keeps
# the mapping that long: its dirty pages outlive the operation (the writer goes on meanwhile),
# and a prepare in between must have the kernel write them back.
import mmap, os, sys, time

path, offset, length, byte, msync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1'
# A name that is not UTF-8 comes as hex: its bytes (the writer cannot pass them as an argument).
if path.startswith('hex:'):
    path = bytes.fromhex(path[4:])
hold_ms = int(sys.argv[6]) if len(sys.argv) > 6 else 0
fd = os.open(path, os.O_RDWR)
try:
    size = os.fstat(fd).st_size
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[offset:offset + length] = bytes([byte]) * length
    if msync:
        m.flush()
    elif hold_ms > 0:
        sys.stdout.write('written\n')
        sys.stdout.flush()
        time.sleep(hold_ms / 1000)
    m.close()
finally:
    os.close(fd)
