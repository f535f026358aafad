// twinfs: names are bytes. A Linux name is any bytes but '/' and NUL; a JavaScript string
// is UTF-16. Node and N-API decode C strings as UTF-8 and put U+FFFD (EF BF BD) for every byte
// that is not UTF-8, so a name like "a\xffb" reached JavaScript as "a\uFFFDb" and went back to
// the kernel as "a\xEF\xBF\xBDb": a different name (docs/architecture.md, "Names are bytes").
//
// These helpers carry such bytes as lone low surrogates U+DC80..U+DCFF, one per byte (Python's
// "surrogateescape", PEP 383): valid UTF-8 decodes as before, every other byte b becomes
// U+DC00 + b, and the way back turns a lone U+DC80..U+DCFF into its byte again. UTF-8 never
// encodes a surrogate, so the mapping is one to one. src/posix/byte-names.ts is the same codec
// in TypeScript. Included by native/posix/twinfs_posix.c and by fuse-native.c (the patch).
#ifndef TWINFS_BYTE_NAMES_H
#define TWINFS_BYTE_NAMES_H

#include <node_api.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// Length of the well-formed UTF-8 sequence at s (n bytes left), 0 if none starts there
// (overlong forms, surrogates and code points past U+10FFFF are not well-formed).
static inline size_t byte_names_seq (const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && s[1] < 0xA0) return 0;
    if (c == 0xED && s[1] >= 0xA0) return 0;
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0;
    if (c == 0xF4 && s[1] >= 0x90) return 0;
    return 4;
  }
  return 0;
}

// The JavaScript string of the bytes s[0..n) (n NAPI_AUTO_LENGTH: up to the NUL).
static inline napi_status byte_names_to_js (napi_env env, const char *s, size_t n, napi_value *out) {
  if (n == NAPI_AUTO_LENGTH) n = strlen(s);
  const unsigned char *u = (const unsigned char *) s;
  size_t i = 0;
  while (i < n) {
    size_t k = byte_names_seq(u + i, n - i);
    if (k == 0) break;
    i += k;
  }
  if (i == n) return napi_create_string_utf8(env, s, n, out);
  // At most one UTF-16 unit per byte: a 4-byte sequence is two units, the others one.
  char16_t *w = malloc((n + 1) * sizeof(char16_t));
  if (w == NULL) return napi_generic_failure;
  size_t m = 0;
  for (i = 0; i < n;) {
    size_t k = byte_names_seq(u + i, n - i);
    if (k == 0) {
      w[m++] = (char16_t) (0xDC00 + u[i]);
      i++;
      continue;
    }
    uint32_t cp;
    if (k == 1) cp = u[i];
    else if (k == 2) cp = ((uint32_t) (u[i] & 0x1F) << 6) | (u[i + 1] & 0x3F);
    else if (k == 3) cp = ((uint32_t) (u[i] & 0x0F) << 12) | ((uint32_t) (u[i + 1] & 0x3F) << 6) | (u[i + 2] & 0x3F);
    else cp = ((uint32_t) (u[i] & 0x07) << 18) | ((uint32_t) (u[i + 1] & 0x3F) << 12) | ((uint32_t) (u[i + 2] & 0x3F) << 6) | (u[i + 3] & 0x3F);
    if (cp >= 0x10000) {
      cp -= 0x10000;
      w[m++] = (char16_t) (0xD800 + (cp >> 10));
      w[m++] = (char16_t) (0xDC00 + (cp & 0x3FF));
    } else {
      w[m++] = (char16_t) cp;
    }
    i += k;
  }
  napi_status st = napi_create_string_utf16(env, w, m, out);
  free(w);
  return st;
}

// Encodes the UTF-16 units w[0..n) into out (room for 3 bytes a unit and a NUL); the byte count.
static inline size_t byte_names_encode (const char16_t *w, size_t n, char *out) {
  unsigned char *o = (unsigned char *) out;
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t c = w[i];
    if (c >= 0xD800 && c <= 0xDBFF && i + 1 < n && w[i + 1] >= 0xDC00 && w[i + 1] <= 0xDFFF) {
      uint32_t cp = 0x10000 + ((c - 0xD800) << 10) + (w[i + 1] - 0xDC00);
      i++;
      o[m++] = (unsigned char) (0xF0 | (cp >> 18));
      o[m++] = (unsigned char) (0x80 | ((cp >> 12) & 0x3F));
      o[m++] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
      o[m++] = (unsigned char) (0x80 | (cp & 0x3F));
    } else if (c >= 0xDC80 && c <= 0xDCFF) {
      o[m++] = (unsigned char) (c - 0xDC00);
    } else if (c >= 0xD800 && c <= 0xDFFF) {
      // Any other lone surrogate stands for no byte: U+FFFD, as Node writes it.
      o[m++] = 0xEF;
      o[m++] = 0xBF;
      o[m++] = 0xBD;
    } else if (c < 0x80) {
      o[m++] = (unsigned char) c;
    } else if (c < 0x800) {
      o[m++] = (unsigned char) (0xC0 | (c >> 6));
      o[m++] = (unsigned char) (0x80 | (c & 0x3F));
    } else {
      o[m++] = (unsigned char) (0xE0 | (c >> 12));
      o[m++] = (unsigned char) (0x80 | ((c >> 6) & 0x3F));
      o[m++] = (unsigned char) (0x80 | (c & 0x3F));
    }
  }
  o[m] = 0;
  return m;
}

// Whether V8's UTF-8 of a string holds EF BF BD (U+FFFD: what it writes for a lone surrogate).
static inline int byte_names_replaced (const char *s, size_t n) {
  for (size_t i = 0; i + 2 < n; i++)
    if ((unsigned char) s[i] == 0xEF && (unsigned char) s[i + 1] == 0xBF && (unsigned char) s[i + 2] == 0xBD) return 1;
  return 0;
}

// The bytes of the JavaScript string v, malloc'd and NUL-terminated (*len: their count, may be
// NULL); NULL when v is not a string or memory ran out. V8 writes a lone surrogate as EF BF BD,
// so only a string whose UTF-8 has that sequence is read again as UTF-16 and encoded here.
static inline char *byte_names_from_js (napi_env env, napi_value v, size_t *len) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) return NULL;
  char *s = malloc(n + 1);
  if (s == NULL) return NULL;
  napi_get_value_string_utf8(env, v, s, n + 1, &n);
  if (!byte_names_replaced(s, n)) {
    if (len) *len = n;
    return s;
  }
  free(s);
  size_t units = 0;
  if (napi_get_value_string_utf16(env, v, NULL, 0, &units) != napi_ok) return NULL;
  char16_t *w = malloc((units + 1) * sizeof(char16_t));
  char *o = malloc(units * 3 + 1);
  if (w == NULL || o == NULL) {
    free(w);
    free(o);
    return NULL;
  }
  napi_get_value_string_utf16(env, v, w, units + 1, &units);
  size_t m = byte_names_encode(w, units, o);
  free(w);
  if (len) *len = m;
  return o;
}

// byte_names_from_js into buf (cap bytes with the NUL); napi_invalid_arg when v is not a string
// or does not fit (*len then is the full count). A name with nothing to decode (the common case:
// readdir's names) is written into buf directly, without an allocation.
static inline napi_status byte_names_copy_from_js (napi_env env, napi_value v, char *buf, size_t cap, size_t *len) {
  size_t n = 0;
  if (cap > 1 && napi_get_value_string_utf8(env, v, buf, cap, &n) == napi_ok && n < cap - 1 &&
      !byte_names_replaced(buf, n)) {
    if (len) *len = n;
    return napi_ok;
  }
  char *s = byte_names_from_js(env, v, &n);
  if (s == NULL) return napi_invalid_arg;
  if (len) *len = n;
  if (n + 1 > cap) {
    free(s);
    return napi_invalid_arg;
  }
  memcpy(buf, s, n + 1);
  free(s);
  return napi_ok;
}

#endif
