# Child of bench/two-name-read.mjs (never the process serving the mount): a file with two names,
# N rounds of an O_APPEND of 4 KiB through the first name, then a pread of the new bytes through a
# descriptor of the second name kept open. Prints one JSON line: rounds, short reads (the second
# name's kernel inode still had the size before the append), how many of those an fstat then
# showed the right size for and a second pread read right, and the first few of them.
import json, os, sys

d, n = sys.argv[1], int(sys.argv[2])
f = os.path.join(d, 'f')
g = f + '.lnk'
fd = os.open(f, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b'\x01' * 4096)
os.close(fd)
if os.path.exists(g):
    os.unlink(g)
os.link(f, g)
gfd = os.open(g, os.O_RDONLY)
size = len(os.pread(gfd, 8192, 0))
short = []
right_after = again_right = 0
for i in range(n):
    data = bytes([i % 251 + 2]) * 4096
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    os.write(a, data)
    os.close(a)
    got = os.pread(gfd, 8192, size)
    if got != data:
        # What twinfs answers now (fstat returns the GETATTR's reply even where the kernel does
        # not take it into the inode), and a second pread (the inode's attributes still invalid).
        st = os.fstat(gfd).st_size
        again = os.pread(gfd, 8192, size)
        short.append({'round': i, 'at': size, 'got': len(got), 'fstat': st, 'again': len(again)}
                     if len(short) < 10 else None)
        fstat_right = (st == size + 4096)
        if fstat_right:
            right_after += 1
        if again == data:
            again_right += 1
    size += 4096
    if size > 64 << 20:
        break
os.close(gfd)
print(json.dumps({'rounds': i + 1, 'short': len(short), 'fstatRight': right_after, 'againRight': again_right,
                  'first': [s for s in short if s][:10]}))
