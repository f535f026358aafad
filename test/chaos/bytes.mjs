/** The byte at offset i of the chaos writer's file k: any state of a file is checkable without a copy of it. */
export function byteAt(k, i) {
  return ((Math.imul(i + 1, 2654435761) >>> 24) ^ (k * 37)) & 0xff;
}
