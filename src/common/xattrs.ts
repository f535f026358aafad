import * as xattr from 'fs-xattr';

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
 * (ENOENT, EACCES, EIO...) are thrown: the caller decides. fs-xattr follows symlinks: callers
 * skip them (a symlink's own user.* attributes cannot exist on Linux).
 */
export async function readXattrs(file: string): Promise<Map<string, Buffer>> {
  let names: string[] = [];
  // The list is sized and then read as well: one that grew in between answers ERANGE.
  for (let attempt = 0; ; attempt++) {
    try {
      names = await xattr.listAttributes(file);
      break;
    } catch (err) {
      if (isNoXattrSupport(err)) return new Map();
      if ((err as NodeJS.ErrnoException).code !== 'ERANGE' || attempt >= 8) throw err;
    }
  }
  const out = new Map<string, Buffer>();
  for (const name of names) {
    const v = await getXattr(file, name);
    if (v) out.set(name, v);
  }
  return out;
}

/**
 * One attribute's value, or undefined when it vanished. getxattr sizes the value first and then
 * reads it: a value that grew in between answers ERANGE, and is read again.
 */
async function getXattr(file: string, name: string): Promise<Buffer | undefined> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await xattr.getAttribute(file, name);
    } catch (err) {
      if (isNoAttr(err)) return undefined;
      if ((err as NodeJS.ErrnoException).code !== 'ERANGE' || attempt >= 8) throw err;
    }
  }
}

/** Removes an attribute; one already gone is fine (removal is idempotent). */
export async function removeXattr(file: string, name: string): Promise<void> {
  try {
    await xattr.removeAttribute(file, name);
  } catch (err) {
    if (!isNoAttr(err)) throw err;
  }
}
