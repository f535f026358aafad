import * as posixXattrs from '../posix/xattr.js';

/**
 * Reading extended attributes of a live tree, shared by the mirror driver, verify and the peer.
 * listxattr and getxattr are two calls: an attribute removed between them (an application doing
 * removexattr while we copy) answers ENODATA, and that means "not there", never a failure.
 */

/** The attribute does not exist (ENODATA; ENOATTR on other systems). */
export function isNoAttr(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENODATA' || code === 'ENOATTR';
}

/** The filesystem keeps no xattrs (of that namespace). */
export function isNoXattrSupport(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOTSUP' || code === 'EOPNOTSUPP';
}

/**
 * Every attribute of file with its value (empty values included). Attributes that vanish
 * between list and get are left out; a file system without xattrs has none. Other errors
 * (ENOENT, EACCES, EIO...) are thrown: the caller decides. The path's own attributes (l*xattr:
 * callers skip symlinks, whose user.* attributes cannot exist on Linux), by the project's addon,
 * which takes names as bytes (docs/architecture.md, "Names are bytes"): fs-xattr, used here
 * before, encoded a name that is not UTF-8 as another name and lost its attributes.
 */
export async function readXattrs(file: string): Promise<Map<string, Buffer>> {
  return posixXattrs.readXattrs(file);
}

/** The names of file's attributes; none on a file system without xattrs. */
export async function readXattrNames(file: string): Promise<string[]> {
  return posixXattrs.listXattrs(file);
}

/** Sets an attribute (created or replaced). */
export async function writeXattr(file: string, name: string, value: Buffer): Promise<void> {
  posixXattrs.setXattr(file, name, value);
}

/** Removes an attribute; one already gone is fine (removal is idempotent). */
export async function removeXattr(file: string, name: string): Promise<void> {
  try {
    posixXattrs.removeXattr(file, name);
  } catch (err) {
    if (!isNoAttr(err)) throw err;
  }
}
