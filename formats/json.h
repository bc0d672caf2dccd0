/* json — strict JSON (RFC 8259) parsing into an owned tree, plus string escaping.
 *
 * For safetensors headers, which come from files we did not write, so it rejects
 * rather than guesses: invalid UTF-8, bad escapes, leading zeros, trailing garbage,
 * duplicate object keys, \u0000 and nesting deeper than JSON_MAX_DEPTH all fail with a
 * one-line reason and a byte offset. Objects keep their keys in file order. The parser
 * is Debian's jansson; json.c maps its tree and errors to these (docs/fuzzing.md, "The
 * JSON parser").
 * Use: json_parse(&root, text, len, err, sizeof err) ... json_get(root, "key") ...
 * json_destroy(&root). */
#ifndef MIMIC_JSON_H
#define MIMIC_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

typedef enum {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT
} json_type_t;

typedef struct json_value json_value_t;
struct json_value {
    json_type_t type;
    int boolean;         /* JSON_BOOL */
    double num;          /* JSON_NUMBER */
    int is_int;          /* JSON_NUMBER without fraction/exponent that fits int64_t */
    int64_t i;           /* valid when is_int */
    char *str;           /* JSON_STRING: decoded UTF-8, NUL-terminated */
    size_t len;          /* JSON_STRING: bytes in str (it may hold an escaped \u0000) */
    int n;               /* JSON_ARRAY / JSON_OBJECT: number of items */
    json_value_t *items; /* n values */
    json_value_t *keys;  /* JSON_OBJECT: n JSON_STRING keys, keys[k] names items[k] */
};

/* Parses exactly one JSON value spanning text[0..len) (whitespace around it allowed).
 * Returns 0 and an owned tree in *out, or MIMIC_EFORMAT / MIMIC_ENOMEM with a one-line
 * reason (including the byte offset) in err. */
int json_parse(json_value_t **out, const char *text, size_t len, char *err, size_t errlen);
void json_destroy(json_value_t **v);

/* Member `key` of an object, or NULL (also when obj is not an object). */
const json_value_t *json_get(const json_value_t *obj, const char *key);

/* 1 if s[0..len) is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int json_utf8_valid(const char *s, size_t len);

/* Writes s as a quoted JSON string into dst (escaping '"', '\\' and control bytes;
 * other UTF-8 passes through). Returns the length it needs (excluding the NUL),
 * like snprintf: call with dst NULL / cap 0 to size the buffer. The output matches
 * Python's json.dumps(s, ensure_ascii=False), so both writers make identical files. */
size_t json_escape(char *dst, size_t cap, const char *s);

#endif
