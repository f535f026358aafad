import * as posixXattrs from '../posix/xattr.js';

/**
 * Extended attributes of a live tree, shared by the mirror driver, verify and the peer: which
 * errors mean "not there" or "not kept here". listxattr and getxattr are two calls: an attribute
 * removed between them (an application doing removexattr while we copy) answers ENODATA, and
 * that means "not there", never a failure (src/posix/xattr.ts readXattrs leaves it out).
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
 * Removes an attribute of the path itself; one already gone is fine (removal is idempotent).
 * Reading and setting are src/posix/xattr.ts's (l*xattr, names as bytes: docs/architecture.md,
 * "Names are bytes"; fs-xattr, used here before, encoded a name that is not UTF-8 as another).
 */
export function removeXattr(file: string, name: string): void {
  try {
    posixXattrs.removeXattr(file, name);
  } catch (err) {
    if (!isNoAttr(err)) throw err;
  }
}
