# The operations of bench/exerciser-worker.mjs that Node has no call for: fallocate, mmap
# writes, setxattr and getxattr. One helper per worker process, for the whole run; it reads one
# request per line from the FIFO argv[1] and answers one line on the FIFO argv[2]:
#   fallocate PATH OFF LEN       -> ok | err ERRNO   (posix_fallocate, mode 0: may grow the file)
#   mmap PATH OFF HEX            -> ok | err ERRNO   (MAP_SHARED write, msync before unmapping;
#                                   ERANGE when fstat shows the file shorter than OFF + the data)
#   setxattr PATH NAME HEX       -> ok | err ERRNO
#   getxattr PATH NAME           -> ok HEX | err ERRNO
# Fields are tab-separated.
import errno, mmap, os, sys

req = open(sys.argv[1], 'r')
resp = open(sys.argv[2], 'w')
for line in req:
    f = line.rstrip('\n').split('\t')
    try:
        op, path = f[0], f[1]
        out = ''
        if op == 'fallocate':
            fd = os.open(path, os.O_RDWR)  # glibc's emulation reads
            try:
                os.posix_fallocate(fd, int(f[2]), int(f[3]))
            finally:
                os.close(fd)
        elif op == 'mmap':
            off, data = int(f[2]), bytes.fromhex(f[3])
            fd = os.open(path, os.O_RDWR)
            try:
                # Past the end the size this name shows would be SIGBUS: say so instead.
                if os.fstat(fd).st_size < off + len(data):
                    raise OSError(errno.ERANGE, 'stale size')
                # A mapping starts at a page boundary: map from the page holding off.
                start = off - off % mmap.ALLOCATIONGRANULARITY
                m = mmap.mmap(fd, off + len(data) - start, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
                m[off - start:off - start + len(data)] = data
                m.flush()
                m.close()
            finally:
                os.close(fd)
        elif op == 'setxattr':
            os.setxattr(path, f[2], bytes.fromhex(f[3]), follow_symlinks=False)
        elif op == 'getxattr':
            out = os.getxattr(path, f[2], follow_symlinks=False).hex()
        else:
            raise OSError(errno.EINVAL, 'unknown op ' + op)
        resp.write('ok\t' + out + '\n')
    except OSError as e:
        resp.write('err\t' + errno.errorcode.get(e.errno, str(e.errno)) + '\n')
    resp.flush()
