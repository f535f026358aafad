// twinfs's own POSIX calls that Node lacks (docs/architecture.md, "POSIX helpers").
//
// Every function but syncFileRange and fallocate is one synchronous system call on a local path or descriptor
// and returns 0 (or its result) on success, and a negative errno on failure: the JS side
// (src/posix) turns that into an errno error. Nothing here blocks for long: flock is called
// non-blocking by twinfs, and the rest are metadata calls. syncFileRange, which can wait for the
// disk's request queue, and fallocate run in libuv's thread pool and resolves a promise. Used by the FUSE layer, the mirror driver and the
// backup peer alike, so a peer host needs no FUSE build. One exception to "POSIX":
// aesGcmSealInPlace, the repository's pack encryption without Node's per-update buffers, and
// copyBytes, a plain memcpy between views of shared memory. seekData (lseek SEEK_DATA/SEEK_HOLE)
// and cachedPages (cachestat) are metadata calls like the rest. cdcCut is the repository's
// content-defined chunking (FastCDC), the one other compute helper.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include "byte-names.h"
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define CHECK(call)                                                                     \
  do {                                                                                  \
    if ((call) != napi_ok) {                                                            \
      napi_throw_error(env, NULL, "twinfs_posix: bad arguments (" #call ")");         \
      return NULL;                                                                      \
    }                                                                                   \
  } while (0)

static napi_value num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

static napi_value result(napi_env env, int rc) { return num(env, rc == 0 ? 0 : -errno); }

// A path argument, copied into a malloc'd NUL-terminated string (NULL when not a string).
// Names are bytes: a lone U+DC80..U+DCFF in the string is the byte it stands for (native/common/
// byte-names.h, shared with the FUSE layer; docs/architecture.md, "Names are bytes").
static char *path_arg(napi_env env, napi_value v) { return byte_names_from_js(env, v, NULL); }

// mknod(path, mode, dev): any node type, sockets included (bind(2) makes them, and so does
// mknod with S_IFSOCK). dev is a dev_t as stat(2) gives it (glibc's encoding).
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  double mode, dev;
  CHECK(napi_get_value_double(env, argv[1], &mode));
  CHECK(napi_get_value_double(env, argv[2], &dev));
  char *p = path_arg(env, argv[0]);
  if (!p) return num(env, -EINVAL);
  int rc = mknod(p, (mode_t)mode, (dev_t)dev);
  napi_value r = result(env, rc);
  free(p);
  return r;
}

// A time argument: a bigint of ns since the epoch, or null/undefined for UTIME_OMIT.
static int time_arg(napi_env env, napi_value v, struct timespec *ts) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return -1;
  if (t == napi_null || t == napi_undefined) {
    ts->tv_sec = 0;
    ts->tv_nsec = UTIME_OMIT;
    return 0;
  }
  if (t != napi_bigint) return -1;
  int64_t ns;
  bool lossless;
  if (napi_get_value_bigint_int64(env, v, &ns, &lossless) != napi_ok || !lossless) return -1;
  int64_t sec = ns / 1000000000, rem = ns % 1000000000;
  if (rem < 0) {  // before 1970: tv_nsec must stay in [0, 1e9)
    rem += 1000000000;
    sec -= 1;
  }
  ts->tv_sec = (time_t)sec;
  ts->tv_nsec = (long)rem;
  return 0;
}

// utimensat(path, atimeNs, mtimeNs, nofollow): times to the ns; null leaves a time alone.
static napi_value js_utimensat(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct timespec ts[2];
  if (argc < 4 || time_arg(env, argv[1], &ts[0]) || time_arg(env, argv[2], &ts[1])) return num(env, -EINVAL);
  bool nofollow = false;
  CHECK(napi_get_value_bool(env, argv[3], &nofollow));
  char *p = path_arg(env, argv[0]);
  if (!p) return num(env, -EINVAL);
  int rc = utimensat(AT_FDCWD, p, ts, nofollow ? AT_SYMLINK_NOFOLLOW : 0);
  napi_value r = result(env, rc);
  free(p);
  return r;
}

// flock(fd, exclusive, nonblocking). The lock belongs to the open file description: it lasts
// until the descriptor is closed, which the kernel does when the process dies.
static napi_value js_flock(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  bool exclusive = false, nonblocking = false;
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_bool(env, argv[1], &exclusive));
  CHECK(napi_get_value_bool(env, argv[2], &nonblocking));
  int rc = flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | (nonblocking ? LOCK_NB : 0));
  return result(env, rc);
}

// The xattr calls take a path (the entry itself: l*xattr) or, since ABI level 13, a descriptor
// (f*xattr): a file open in twinfs whose name is gone (unlinked while open, its directory then
// removed) has no path left, only its descriptor. The path form gives `p`; the descriptor form
// gives `fd` and a non-NULL `p` of "" so that the callers' checks stay as they were.
static char *xattr_target(napi_env env, napi_value v, int *fd) {
  napi_valuetype t;
  *fd = -1;
  if (napi_typeof(env, v, &t) == napi_ok && t == napi_number) {
    int32_t n;
    if (napi_get_value_int32(env, v, &n) != napi_ok || n < 0) return NULL;
    *fd = n;
    return strdup("");
  }
  return path_arg(env, v);
}
#define X_LIST(p, fd, buf, n) ((fd) >= 0 ? flistxattr((fd), (buf), (n)) : llistxattr((p), (buf), (n)))
#define X_GET(p, fd, name, buf, n) ((fd) >= 0 ? fgetxattr((fd), (name), (buf), (n)) : lgetxattr((p), (name), (buf), (n)))
#define X_SET(p, fd, name, v, n, f) ((fd) >= 0 ? fsetxattr((fd), (name), (v), (n), (f)) : lsetxattr((p), (name), (v), (n), (f)))
#define X_REMOVE(p, fd, name) ((fd) >= 0 ? fremovexattr((fd), (name)) : lremovexattr((p), (name)))

// llistxattr(path | fd): the names of a path's own xattrs (a symlink's, not its target's), or of
// an open file's, as an array of strings, or a negative errno.
static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int fd;
  char *p = xattr_target(env, argv[0], &fd);
  if (!p) return num(env, -EINVAL);
  char *buf = NULL;
  ssize_t n;
  for (;;) {  // the list may grow between the size query and the read: ERANGE, ask again
    n = X_LIST(p, fd, NULL, 0);
    if (n <= 0) break;
    buf = realloc(buf, (size_t)n);
    if (!buf) {
      free(p);
      return num(env, -ENOMEM);
    }
    ssize_t got = X_LIST(p, fd, buf, (size_t)n);
    if (got >= 0 || errno != ERANGE) {
      n = got;
      break;
    }
  }
  int err = n < 0 ? -errno : 0;
  free(p);
  if (err) {
    free(buf);
    return num(env, err);
  }
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t i = 0;
  for (ssize_t off = 0; off < n;) {
    size_t len = strlen(buf + off);
    napi_value s;
    byte_names_to_js(env, buf + off, len, &s);
    napi_set_element(env, arr, i++, s);
    off += (ssize_t)len + 1;
  }
  free(buf);
  return arr;
}

// lgetxattr(path | fd, name): the value as a Buffer, or a negative errno (ENODATA: no such xattr).
static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int fd;
  char *p = xattr_target(env, argv[0], &fd);
  char *name = path_arg(env, argv[1]);
  if (!p || !name) {
    free(p);
    free(name);
    return num(env, -EINVAL);
  }
  char *buf = NULL;
  ssize_t n;
  for (;;) {
    n = X_GET(p, fd, name, NULL, 0);
    if (n < 0) break;
    buf = realloc(buf, n > 0 ? (size_t)n : 1);
    if (!buf) {
      n = -1;
      errno = ENOMEM;
      break;
    }
    ssize_t got = X_GET(p, fd, name, buf, (size_t)n);
    if (got >= 0 || errno != ERANGE) {
      n = got;
      break;
    }
  }
  int err = n < 0 ? -errno : 0;
  free(p);
  free(name);
  if (err) {
    free(buf);
    return num(env, err);
  }
  napi_value out;
  void *data;
  napi_create_buffer_copy(env, (size_t)n, buf, &data, &out);
  free(buf);
  return out;
}

// lsetxattr(path | fd, name, value, flags): flags 0, XATTR_CREATE (1) or XATTR_REPLACE (2).
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data;
  size_t len;
  int32_t flags;
  CHECK(napi_get_buffer_info(env, argv[2], &data, &len));
  CHECK(napi_get_value_int32(env, argv[3], &flags));
  int fd;
  char *p = xattr_target(env, argv[0], &fd);
  char *name = path_arg(env, argv[1]);
  int rc = p && name ? X_SET(p, fd, name, data, len, flags) : (errno = EINVAL, -1);
  napi_value r = result(env, rc);
  free(p);
  free(name);
  return r;
}

// lremovexattr(path | fd, name).
static napi_value js_lremovexattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int fd;
  char *p = xattr_target(env, argv[0], &fd);
  char *name = path_arg(env, argv[1]);
  int rc = p && name ? X_REMOVE(p, fd, name) : (errno = EINVAL, -1);
  napi_value r = result(env, rc);
  free(p);
  free(name);
  return r;
}

// readdirNoAtime(path): the names in a directory (without . and ..), read through a descriptor
// opened with O_NOATIME where allowed (owner or root; anyone else reads without it), so that a
// backup's walk does not change the directory atimes the next backup records. Array or -errno.
static napi_value js_readdir_noatime(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *p = path_arg(env, argv[0]);
  if (!p) return num(env, -EINVAL);
  int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  int fd = open(p, flags | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = open(p, flags);
  free(p);
  if (fd < 0) return num(env, -errno);
  DIR *d = fdopendir(fd);
  if (!d) {
    int err = errno;
    close(fd);
    return num(env, -err);
  }
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t i = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (!e) break;
    if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0))) continue;
    napi_value s;
    byte_names_to_js(env, e->d_name, NAPI_AUTO_LENGTH, &s);
    napi_set_element(env, arr, i++, s);
  }
  int err = errno;
  closedir(d);
  return err ? num(env, -err) : arr;
}

// openDirBeneath(root, rel): a descriptor (O_PATH) of the directory rel under root, opened one
// component at a time with openat(O_PATH|O_DIRECTORY|O_NOFOLLOW), so that no component is a
// symlink (ELOOP/ENOTDIR: nothing can lead out of root) and no path handed to the kernel is
// longer than one name. rel is '/'-separated and relative ('' or '/' is root itself); '..' is
// refused (EPERM). For paths whose full backing path is PATH_MAX or longer: the caller then
// names the entry as /proc/self/fd/N/leaf, which resolves through the descriptor as the *at
// calls do. Returns the descriptor or -errno.
static napi_value js_open_dir_beneath(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *root = path_arg(env, argv[0]);
  char *rel = path_arg(env, argv[1]);
  if (!root || !rel) {
    free(root);
    free(rel);
    return num(env, -EINVAL);
  }
  int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  int err = fd < 0 ? errno : 0;
  char *save = NULL;
  for (char *c = strtok_r(rel, "/", &save); c && fd >= 0; c = strtok_r(NULL, "/", &save)) {
    if (strcmp(c, ".") == 0) continue;
    if (strcmp(c, "..") == 0) {
      err = EPERM;
      close(fd);
      fd = -1;
      break;
    }
    int next = openat(fd, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    err = next < 0 ? errno : 0;
    close(fd);
    fd = next;
  }
  free(root);
  free(rel);
  return num(env, fd >= 0 ? fd : -err);
}

// Calls on a descriptor that can wait for the disk, in libuv's thread pool: each resolves a
// promise with 0 or -errno.
//
// syncFileRange(fd, offset, len): sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts the
// write-back of that range's dirty pages and does not wait for it (it can wait for a full
// request queue). A hint, not a durability point: it makes nothing durable (no metadata, no disk
// cache flush), and a later fsync still does.
//
// fallocate(fd, mode, offset, len): fallocate(2) (allocating a large range on tmpfs or zeroing
// one on a filesystem without unwritten extents takes as long as writing it). The FUSE layer's
// fallocate on the primary and the mirror's copy of a range made zero (PUNCH_HOLE | KEEP_SIZE).
typedef struct {
  int (*call)(int fd, int mode, int64_t a, int64_t b);
  int fd;
  int mode;
  int64_t a;
  int64_t b;
  int rc;
  napi_deferred deferred;
  napi_async_work work;
} pool_job;

static int sfr_call(int fd, int mode, int64_t a, int64_t b) {
  return sync_file_range(fd, a, b, SYNC_FILE_RANGE_WRITE);
}

static int falloc_call(int fd, int mode, int64_t a, int64_t b) { return fallocate(fd, mode, a, b); }

static void pool_execute(napi_env env, void *data) {
  pool_job *j = data;
  j->rc = j->call(j->fd, j->mode, j->a, j->b) == 0 ? 0 : -errno;
}

static void pool_complete(napi_env env, napi_status status, void *data) {
  pool_job *j = data;
  napi_resolve_deferred(env, j->deferred, num(env, status == napi_ok ? j->rc : -ECANCELED));
  napi_delete_async_work(env, j->work);
  free(j);
}

// Arguments: fd, then mode when with_mode, then the two 64-bit values.
static napi_value queue_pool_job(napi_env env, napi_callback_info info, const char *name,
                                 int (*call)(int, int, int64_t, int64_t), int with_mode) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  pool_job *j = calloc(1, sizeof(*j));
  if (!j) {
    napi_throw_error(env, NULL, "twinfs_posix: out of memory");
    return NULL;
  }
  j->call = call;
  size_t at = with_mode ? 2 : 1;
  napi_value promise, work_name;
  if (argc < at + 2 || napi_get_value_int32(env, argv[0], &j->fd) != napi_ok ||
      (with_mode && napi_get_value_int32(env, argv[1], &j->mode) != napi_ok) ||
      napi_get_value_int64(env, argv[at], &j->a) != napi_ok ||
      napi_get_value_int64(env, argv[at + 1], &j->b) != napi_ok ||
      napi_create_promise(env, &j->deferred, &promise) != napi_ok) {
    free(j);
    napi_throw_error(env, NULL, "twinfs_posix: bad arguments (pool call)");
    return NULL;
  }
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &work_name);
  if (napi_create_async_work(env, NULL, work_name, pool_execute, pool_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    napi_resolve_deferred(env, j->deferred, num(env, -EAGAIN));
    free(j);
  }
  return promise;
}

static napi_value js_sync_file_range(napi_env env, napi_callback_info info) {
  return queue_pool_job(env, info, "twinfs_sync_file_range", sfr_call, 0);
}

static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  return queue_pool_job(env, info, "twinfs_fallocate", falloc_call, 1);
}

// fadviseWillNeed(fd, offset, len): posix_fadvise(POSIX_FADV_WILLNEED): the kernel starts
// reading the range into the page cache and returns without waiting for it. The repository's
// reader thread opens a batch of small files, asks for all of them, then reads them one after
// another: the disk gets the whole batch at once instead of one file's read at a time (a cold
// page cache). 0, or a negative errno.
static napi_value js_fadvise_willneed(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int64_t offset, len;
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_int64(env, argv[1], &offset));
  CHECK(napi_get_value_int64(env, argv[2], &len));
  int rc = posix_fadvise(fd, (off_t)offset, (off_t)len, POSIX_FADV_WILLNEED);
  return num(env, -rc);
}

// aesGcmSealInPlace(key, nonce, data, n): data[0, n) encrypted in place with AES-256-GCM (a
// 32-byte key, a 12-byte nonce), its 16-byte tag written at data[n, n + 16). 0, or -EINVAL for
// sizes that do not fit, -EIO when OpenSSL fails. Node's Cipher answers every update with a
// buffer of its own (two, for GCM: one a byte too large, then a copy): memory the repository's
// seal of a pack paid a page fault per 4 KiB for, on some VMs more than the encryption. Here the
// pack is encrypted where it lies (OpenSSL, as linked into Node; in place is allowed).
static napi_value js_aes_gcm_seal_in_place(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *key, *nonce, *data;
  size_t klen, nlen, dlen;
  double n;
  CHECK(napi_get_buffer_info(env, argv[0], &key, &klen));
  CHECK(napi_get_buffer_info(env, argv[1], &nonce, &nlen));
  CHECK(napi_get_buffer_info(env, argv[2], &data, &dlen));
  CHECK(napi_get_value_double(env, argv[3], &n));
  if (klen != 32 || nlen != 12 || !(n >= 0) || n > (double)dlen - 16 || n != (double)(size_t)n)
    return num(env, -EINVAL);
  size_t len = (size_t)n;
  unsigned char *p = data;
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int ok = ctx != NULL && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1 &&
           EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) == 1;
  size_t done = 0;
  while (ok && done < len) {
    int piece = len - done > (1 << 30) ? (1 << 30) : (int)(len - done);
    int outl = 0;
    ok = EVP_EncryptUpdate(ctx, p + done, &outl, p + done, piece) == 1 && outl == piece;
    done += (size_t)piece;
  }
  int outl = 0;
  ok = ok && EVP_EncryptFinal_ex(ctx, p + len, &outl) == 1 && outl == 0 &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, p + len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  return num(env, ok ? 0 : -EIO);
}

// copyBytes(dst, at, src): src copied into dst at byte offset `at` with memcpy; src.length, or
// -EINVAL when it does not fit. V8 copies from or to a SharedArrayBuffer with relaxed atomic
// accesses, a byte at a time unless both sides are aligned alike mod 8 (about 0.35 ms of CPU per
// MiB here against 0.05 for memcpy); the repository copies every new blob (a chunk of a window,
// at any offset) into its batch that way. Callers make sure no other thread writes either range
// meanwhile (the window is held until its chunks are handed on; the batch is not yet a worker's).
static napi_value js_copy_bytes(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *dst, *src;
  size_t dlen, slen;
  double at;
  CHECK(napi_get_buffer_info(env, argv[0], &dst, &dlen));
  CHECK(napi_get_value_double(env, argv[1], &at));
  CHECK(napi_get_buffer_info(env, argv[2], &src, &slen));
  if (!(at >= 0) || at != (double)(size_t)at || (size_t)at > dlen || slen > dlen - (size_t)at)
    return num(env, -EINVAL);
  if (slen > 0) memcpy((unsigned char *)dst + (size_t)at, src, slen);
  return num(env, (double)slen);
}

// seekData(fd, offset, hole): lseek(fd, offset, SEEK_DATA), or SEEK_HOLE when hole is true: the
// offset of the next data (or hole; the end of the file counts as one) at or after offset, or
// -errno: -ENXIO when there is no data at or after offset (or offset is at or past the end),
// -EINVAL where the filesystem has no such seek. The descriptor's file position moves; twinfs
// reads and writes at explicit positions only. Copies of sparse files skip their holes with it.
static napi_value js_seek_data(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  double off;
  bool hole;
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_double(env, argv[1], &off));
  CHECK(napi_get_value_bool(env, argv[2], &hole));
  if (!(off >= 0) || off > 9007199254740991.0 || off != (double)(int64_t)off) return num(env, -EINVAL);
  off_t r = lseek(fd, (off_t)off, hole ? SEEK_HOLE : SEEK_DATA);
  return num(env, r < 0 ? -errno : (double)r);
}

// cachedPages(fd, offset, len): how many pages of [offset, offset + len) (len 0: to the end) the
// page cache holds, by cachestat(2) (Linux 6.5), or -errno (-ENOSYS on older kernels). The backup
// peer reads a large file the cache does not hold with O_DIRECT: a buffered read of a cold file
// costs a page-cache fill and a copy per page (1.3 s of system CPU per GiB on this project's VMs,
// against 0.04 s with O_DIRECT), which a backup that reads each byte once never gets back.
#ifndef __NR_cachestat
#define __NR_cachestat 451 /* the same number on every architecture (the generic table) */
#endif
struct twinfs_cachestat_range {
  uint64_t off;
  uint64_t len;
};
struct twinfs_cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
static napi_value js_cached_pages(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  double off, len;
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_double(env, argv[1], &off));
  CHECK(napi_get_value_double(env, argv[2], &len));
  if (!(off >= 0) || !(len >= 0) || off > 9007199254740991.0 || len > 9007199254740991.0) return num(env, -EINVAL);
  struct twinfs_cachestat_range range = {(uint64_t)off, (uint64_t)len};
  struct twinfs_cachestat cs;
  memset(&cs, 0, sizeof(cs));
  long rc = syscall(__NR_cachestat, fd, &range, &cs, 0);
  return num(env, rc < 0 ? -errno : (double)cs.nr_cache);
}

// adviseHuge(buf): madvise(MADV_HUGEPAGE) over the 2 MiB-aligned part of buf's memory; the
// bytes advised, or -errno. With transparent huge pages in `madvise` mode (Debian's default), a
// large buffer touched for the first time then costs a fault per 2 MiB instead of one per 4 KiB
// (~11 µs each on this project's VMs; advising the pack batches and the small-file batch buffers
// took a 1 GiB backup from ~81,000 faults to ~64,000). Nothing changes for the bytes; a kernel
// without THP says -EINVAL.
#define TWINFS_HUGE (2UL * 1024 * 1024)
static napi_value js_advise_huge(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *data;
  size_t len;
  CHECK(napi_get_buffer_info(env, argv[0], &data, &len));
  uintptr_t start = ((uintptr_t)data + TWINFS_HUGE - 1) & ~(TWINFS_HUGE - 1);
  uintptr_t end = ((uintptr_t)data + len) & ~(TWINFS_HUGE - 1);
  if (end <= start) return num(env, 0);
  if (madvise((void *)start, end - start, MADV_HUGEPAGE) != 0) return num(env, -errno);
  return num(env, (double)(end - start));
}

// cdcCut(parts, min, avg, max): the chunk boundaries FastCDC gives for the bytes of `parts`
// laid end to end, as the repository's chunker has cut them since its first format (the
// `fastcdc` crate 1.x, through @dstanesc/wasm-chunking-fastcdc-node's compute_chunks): a
// Uint32Array of each chunk's start (0 first) and then the total length ([0] for no bytes), or
// -EINVAL when min < 64, avg < 256, max < 1024 or the total is 4 GiB or more. The same cut as the
// WebAssembly's, byte for byte (test/plugins/native-cdc.test.ts compares them), without copying
// the parts into WebAssembly memory first and compiled with -O2 where the module was built for
// size: a large file's cut is the one serial pass per file in a backup.
//
// The algorithm (Xia et al., FastCDC, USENIX ATC 2016, in the 31-bit, right-shifting variant of
// the ronomon/deduplication JavaScript reference that the crate's 1.x follows): a chunk starting
// at s is at most `max` and at least `min` long (or what is left); from s + min on, a gear hash
// h = (h >> 1) + GEAR[byte] is rolled over each byte, and the chunk ends just after the first
// byte where h has none of the mask's bits set: the strict mask (log2(avg) + 1 low bits) up to
// s + avg - min(avg, 1.5 min), the easy one (log2(avg) - 1 bits) after it. The gear table is
// AES-256-CTR's key stream for an all-zero key and counter block (256 big-endian words, each with
// its high bit cleared), made here with OpenSSL once per process rather than carried as
// constants.
static uint32_t cdc_gear[256];
static int cdc_gear_ok;
static pthread_once_t cdc_gear_once = PTHREAD_ONCE_INIT;

static void cdc_gear_make(void) {
  unsigned char key[32] = {0}, iv[16] = {0}, zero[1024] = {0}, out[1024 + 16];
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  int n = 0, fin = 0;
  int ok = ctx != NULL && EVP_EncryptInit_ex(ctx, EVP_aes_256_ctr(), NULL, key, iv) == 1 &&
           EVP_EncryptUpdate(ctx, out, &n, zero, (int)sizeof(zero)) == 1 &&
           EVP_EncryptFinal_ex(ctx, out + n, &fin) == 1 && n + fin == (int)sizeof(zero);
  EVP_CIPHER_CTX_free(ctx);
  if (!ok) return;
  for (int i = 0; i < 256; i++) {
    const unsigned char *b = out + 4 * i;
    cdc_gear[i] = (((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3]) & 0x7fffffffu;
  }
  cdc_gear_ok = 1;
}

// The parts as one sequence of bytes: part k holds [at[k], at[k] + len[k]).
struct cdc_seq {
  const unsigned char **ptr;
  size_t *at, *len;
  uint32_t n;
};

// Rolls the hash over the bytes [from, to) of seq; the position just after the first byte
// where (hash & mask) == 0, or 0 when there is none (a cut never ends at 0). *k is the part to
// start looking in (moved on as the scan goes; positions only grow within one call of cdcCut).
static size_t cdc_scan(const struct cdc_seq *seq, uint32_t *k, size_t from, size_t to, uint32_t mask,
                       uint32_t *hash) {
  uint32_t h = *hash;
  while (from < to) {
    while (*k < seq->n && seq->at[*k] + seq->len[*k] <= from) (*k)++;
    if (*k >= seq->n) break;
    const unsigned char *p = seq->ptr[*k] + (from - seq->at[*k]);
    size_t end = seq->at[*k] + seq->len[*k];
    if (end > to) end = to;
    const unsigned char *e = p + (end - from);
    const unsigned char *q = p;
    while (q < e) {
      h = (h >> 1) + cdc_gear[*q++];
      if ((h & mask) == 0) {
        *hash = h;
        return from + (size_t)(q - p);
      }
    }
    from = end;
  }
  *hash = h;
  return 0;
}

static napi_value js_cdc_cut(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t nparts;
  double dmin, davg, dmax;
  CHECK(napi_get_array_length(env, argv[0], &nparts));
  CHECK(napi_get_value_double(env, argv[1], &dmin));
  CHECK(napi_get_value_double(env, argv[2], &davg));
  CHECK(napi_get_value_double(env, argv[3], &dmax));
  if (!(dmin >= 64 && davg >= 256 && dmax >= 1024) || dmin > 4294967295.0 || davg > 268435456.0 ||
      dmax > 4294967295.0 || nparts > 1024)
    return num(env, -EINVAL);
  pthread_once(&cdc_gear_once, cdc_gear_make);
  if (!cdc_gear_ok) return num(env, -EIO);
  size_t min = (size_t)dmin, avg = (size_t)davg, max = (size_t)dmax;
  const unsigned char *ptr[1024];
  size_t at[1024], len[1024];
  size_t total = 0;
  for (uint32_t i = 0; i < nparts; i++) {
    napi_value part;
    void *data;
    CHECK(napi_get_element(env, argv[0], i, &part));
    CHECK(napi_get_buffer_info(env, part, &data, &len[i]));
    ptr[i] = data;
    at[i] = total;
    total += len[i];
  }
  if (total > 0xffffffffu) return num(env, -EINVAL);
  struct cdc_seq seq = {ptr, at, len, nparts};
  unsigned bits = (unsigned)lround(log2((double)avg));
  uint32_t mask_s = (uint32_t)((1ull << (bits + 1)) - 1), mask_l = (uint32_t)((1ull << (bits - 1)) - 1);
  size_t lead = min + (min + 1) / 2;
  if (lead > avg) lead = avg;
  // Each chunk's start, then the end: at most total / min + 2 words.
  size_t cap = total / min + 2, count = 0;
  uint32_t *starts = malloc(cap * sizeof(uint32_t));
  if (starts == NULL) return num(env, -ENOMEM);
  size_t s = 0;
  uint32_t k = 0;
  while (s < total) {
    starts[count++] = (uint32_t)s;
    size_t size = total - s;
    if (size <= min) break;
    if (size > max) size = max;
    size_t center = avg - lead;
    if (center > size) center = size;
    uint32_t h = 0;
    size_t end = cdc_scan(&seq, &k, s + min, s + center, mask_s, &h);
    if (end == 0) end = cdc_scan(&seq, &k, s + (center > min ? center : min), s + size, mask_l, &h);
    s = end != 0 ? end : s + size;
  }
  starts[count++] = (uint32_t)total;
  napi_value ab, out;
  void *dst;
  napi_status st = napi_create_arraybuffer(env, count * sizeof(uint32_t), &dst, &ab);
  if (st == napi_ok) {
    memcpy(dst, starts, count * sizeof(uint32_t));
    st = napi_create_typedarray(env, napi_uint32_array, count, ab, 0, &out);
  }
  free(starts);
  CHECK(st);
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"utimensat", NULL, js_utimensat, NULL, NULL, NULL, napi_enumerable, NULL},
      {"flock", NULL, js_flock, NULL, NULL, NULL, napi_enumerable, NULL},
      {"llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lremovexattr", NULL, js_lremovexattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readdirNoAtime", NULL, js_readdir_noatime, NULL, NULL, NULL, napi_enumerable, NULL},
      {"openDirBeneath", NULL, js_open_dir_beneath, NULL, NULL, NULL, napi_enumerable, NULL},
      {"syncFileRange", NULL, js_sync_file_range, NULL, NULL, NULL, napi_enumerable, NULL},
      {"aesGcmSealInPlace", NULL, js_aes_gcm_seal_in_place, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fadviseWillNeed", NULL, js_fadvise_willneed, NULL, NULL, NULL, napi_enumerable, NULL},
      {"copyBytes", NULL, js_copy_bytes, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"cachedPages", NULL, js_cached_pages, NULL, NULL, NULL, napi_enumerable, NULL},
      {"adviseHuge", NULL, js_advise_huge, NULL, NULL, NULL, napi_enumerable, NULL},
      {"cdcCut", NULL, js_cdc_cut, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  napi_value v;
  napi_create_uint32(env, 14, &v);
  napi_set_named_property(env, exports, "abiLevel", v);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
