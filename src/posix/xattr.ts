import { check, errnoError } from './errno.js';
import { posix } from './native.js';

/**
 * Extended attributes of a path itself, never through a symlink (l*xattr(2); fs-xattr follows
 * symlinks), or of an open file by its descriptor (a number: f*xattr(2), for a file whose name
 * is gone). POSIX ACLs are the xattrs system.posix_acl_access and system.posix_acl_default,
 * so copying xattrs copies ACLs.
 */
export function listXattrs(path: string | number): string[] {
  const r = posix().llistxattr(path);
  if (typeof r === 'number') {
    // A filesystem without xattrs has none to list.
    if (r === -95 /* EOPNOTSUPP */) return [];
    check(r, `llistxattr ${path}`);
    return [];
  }
  return r;
}

/** A value, or undefined when the attribute is gone (removed between list and get is no error). */
export function getXattr(path: string | number, name: string): Buffer | undefined {
  const r = posix().lgetxattr(path, name);
  if (typeof r !== 'number') return r;
  if (r === -61 /* ENODATA */) return undefined;
  check(r, `lgetxattr ${path} ${name}`);
  throw errnoError('EIO');
}

/** Every xattr of a path, names sorted. */
export function readXattrs(path: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const name of listXattrs(path).sort()) {
    const v = getXattr(path, name);
    if (v) out.set(name, v);
  }
  return out;
}

/** flags: 0, or XATTR_CREATE (1) / XATTR_REPLACE (2), answered EEXIST / ENODATA by the filesystem. */
export function setXattr(path: string | number, name: string, value: Buffer, flags = 0): void {
  check(posix().lsetxattr(path, name, value, flags), `lsetxattr ${path} ${name}`);
}

export function removeXattr(path: string | number, name: string): void {
  check(posix().lremovexattr(path, name), `lremovexattr ${path} ${name}`);
}
