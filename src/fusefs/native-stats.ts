/**
 * What `status().fs.kernelCache.nativeUnlink` says of the changes answered in libfuse's threads
 * (NativeChanges.stats): the patched fuse-native's counts (Fuse.nativeUnlinkStats; native-unlink.h,
 * native-create.h, native-setattr.h, native-rename.h, native-entries.h, native-open.h) and whether they are on.
 * Apart from native-changes.ts so that tests can name it without fuse-native's declarations.
 */
export interface NativeChangeStats {
  /** Unlinks done natively, and tried and passed to JS. */
  answered: number;
  fallbacks: number;
  /** JS ops in flight that may change the primary. */
  busy: number;
  /** Of the answered unlinks, those of files JS held cached data of. */
  cached: number;
  creates: number;
  createFallbacks: number;
  /** Writes to natively created files done natively, and passed to JS. */
  writes: number;
  writeFallbacks: number;
  /** Releases of natively created files done natively, before JS took their create. */
  releases: number;
  /** chmod, chown and utimens done natively, and tried and passed to JS. */
  setattrs: number;
  setattrFallbacks: number;
  renames: number;
  renameFallbacks: number;
  /** mkdir, symlink and rmdir done natively, and tried and passed to JS. */
  entries: number;
  entryFallbacks: number;
  /** Read-only opens done natively, and tried and passed to JS (native-open.h). */
  opens: number;
  openFallbacks: number;
  /** READs of natively opened handles answered natively, and passed to JS (JS held data of the file). */
  openReads: number;
  openReadFallbacks: number;
  /** RELEASEs of natively opened handles JS never took (nothing reached JS of them). */
  openReleases: number;
  /** WRITEs of natively opened handles done natively (before JS took the open, level 29; also after, level 31), and passed to JS. */
  openWrites: number;
  openWriteFallbacks: number;
  /** RELEASEs of natively opened handles that wrote natively, before JS took the open (their writes reach JS by path). */
  openWriteReleases: number;
  /** Truncations done natively (level 30): by path (truncate(2), an open(O_TRUNC)'s) and ftruncates through a created handle before JS took it or an opened one (also after, level 31); and those tried and passed to JS. */
  truncates: number;
  truncateFallbacks: number;
  /** fallocates that only allocate (modes 0 and KEEP_SIZE) through a created handle before JS took it or an opened one, done natively (level 31); and those tried and passed to JS. */
  fallocates: number;
  fallocateFallbacks: number;
  /** Native writes that found the queue at its bounds and waited for JS's take (level 31). */
  writeWaits: number;
  enabled: boolean;
}

/**
 * What `status().fs.kernelCache.native` says of the requests answered from the primary in
 * libfuse's threads (Fuse.nativeAttributeStats; native-attrs.h): getattrs answered there and
 * passed on to JS, inodes with cached attributes, getxattrs, flushes and readlinks answered there,
 * and the creates and opens there whose close sends no FLUSH.
 */
export interface NativeAttributeStats {
  answered: number;
  fallbacks: number;
  cached: number;
  xattrs: number;
  flushes: number;
  readlinks: number;
  /** Creates and opens answered with FOPEN_NOFLUSH (level 30): their close(2) sends no FLUSH. */
  noflushOpens: number;
}
