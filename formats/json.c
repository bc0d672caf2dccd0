/* The JSON parser is Debian's jansson (libjansson-dev), strict on its own: it rejects
 * invalid UTF-8, bad escapes and lone surrogates, raw control characters in strings,
 * \u0000 (JSON_ALLOW_NUL not given), leading zeros, "1.", duplicate keys
 * (JSON_REJECT_DUPLICATES), trailing input, integers beyond int64 and reals beyond
 * double, and keeps object keys in file order. This file turns its tree into ours and
 * its error into our words. What we still enforce ourselves: the nesting limit
 * (JSON_MAX_DEPTH, below jansson's own 2048), one-line error messages (jansson quotes the
 * input near the error, raw: control bytes become '?'), and, in safetensors.c, the
 * header size (100 MB) and every field's type and range. Why not cJSON: docs/fuzzing.md,
 * "The JSON parser". */
/* jansson.h names its value types JSON_NULL, JSON_OBJECT, ... as json.h does; here
 * json.h's are spelled JV_* (the same enumerators, so the same values elsewhere) */
#define JSON_NULL JV_NULL
#define JSON_BOOL JV_BOOL
#define JSON_NUMBER JV_NUMBER
#define JSON_STRING JV_STRING
#define JSON_ARRAY JV_ARRAY
#define JSON_OBJECT JV_OBJECT
#include "json.h"
#undef JSON_NULL
#undef JSON_BOOL
#undef JSON_NUMBER
#undef JSON_STRING
#undef JSON_ARRAY
#undef JSON_OBJECT

#include "common.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Frees what v owns (not v itself). */
static void value_clear(json_value_t *v) {
    if (v->type == JV_STRING) free(v->str);
    if (v->type == JV_ARRAY || v->type == JV_OBJECT) {
        for (int k = 0; k < v->n; k++) {
            value_clear(&v->items[k]);
            if (v->keys) value_clear(&v->keys[k]);
        }
        free(v->items);
        free(v->keys);
    }
    memset(v, 0, sizeof *v);
}

/* Length of the UTF-8 sequence starting at s[0..n), or 0 if it is malformed. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t need;
    unsigned cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 2, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 3, cp = c & 0x07;
    else
        return 0;
    if (n < need + 1) return 0;
    for (size_t k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[k] & 0x3F);
    }
    if (need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
    if (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
    return need + 1;
}

int json_utf8_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_seq(u + i, len - i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

typedef struct {
    char *err;
    size_t errlen;
} conv_t;

static int set_string(json_value_t *v, const char *s, size_t len) {
    v->type = JV_STRING;
    v->len = len;
    if (!(v->str = malloc(len + 1))) return MIMIC_ENOMEM;
    memcpy(v->str, s, len);
    v->str[len] = '\0';
    return 0;
}

/* jansson's value j as ours in v; depth counts the arrays and objects around it. */
static int convert(conv_t *c, const json_t *j, json_value_t *v, int depth) {
    memset(v, 0, sizeof *v);
    switch (json_typeof(j)) {
    case JSON_NULL:
        v->type = JV_NULL;
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        v->type = JV_BOOL;
        v->boolean = json_is_true(j);
        return 0;
    case JSON_INTEGER:
        v->type = JV_NUMBER;
        v->is_int = 1;
        v->i = json_integer_value(j);
        v->num = (double)v->i;
        return 0;
    case JSON_REAL:
        v->type = JV_NUMBER;
        v->num = json_real_value(j);
        return 0;
    case JSON_STRING:
        return set_string(v, json_string_value(j), json_string_length(j));
    case JSON_ARRAY:
    case JSON_OBJECT:
        break;
    }
    if (depth >= JSON_MAX_DEPTH) {
        if (c->errlen) snprintf(c->err, c->errlen, "nesting too deep (over %d levels)", JSON_MAX_DEPTH);
        return MIMIC_EFORMAT;
    }
    int obj = json_is_object(j);
    size_t n = obj ? json_object_size(j) : json_array_size(j);
    v->type = obj ? JV_OBJECT : JV_ARRAY;
    if (n > (size_t)0x7fffffff) return MIMIC_ENOMEM;
    if (!(v->items = calloc(n + 1, sizeof *v->items)) ||
        (obj && !(v->keys = calloc(n + 1, sizeof *v->keys))))
        return MIMIC_ENOMEM;
    if (!obj) {
        for (size_t k = 0; k < n; k++) {
            int rc = convert(c, json_array_get(j, k), &v->items[k], depth + 1);
            v->n = (int)k + 1;
            if (rc) return rc;
        }
        return 0;
    }
    /* jansson iterates an object in insertion (file) order */
    int k = 0;
    for (void *it = json_object_iter((json_t *)j); it; it = json_object_iter_next((json_t *)j, it), k++) {
        const char *key = json_object_iter_key(it);
        int rc = set_string(&v->keys[k], key, json_object_iter_key_len(it));
        if (!rc) rc = convert(c, json_object_iter_value(it), &v->items[k], depth + 1);
        v->n = k + 1;
        if (rc) return rc;
    }
    return 0;
}

/* jansson's error text in our words, one line, with the byte offset. Its text quotes the
 * input near the error ("near '...'"): printed only for a duplicate key, with bytes
 * outside printable ASCII as '?' (a key holding a newline once split the message:
 * tests/fuzz_corpus/safetensors/crash-json-duplicate-key-newline). */
static void explain(const json_error_t *e, char *err, size_t errlen) {
    static const struct {
        const char *theirs, *ours;
    } words[] = {
        {"duplicate object key", "duplicate key"},
        {"\\u0000 is not allowed", "NUL character (\\u0000) in a string"},
        {"unable to decode byte", "invalid UTF-8"},
        {"invalid Unicode", "invalid \\u escape (lone or unpaired surrogate)"},
        {"invalid escape", "bad escape in a string"},
        {"unexpected newline", "raw control character in a string"},
        {"control character", "raw control character in a string"},
        {"end of file expected", "trailing characters after the value"},
        {"maximum parsing depth reached", "nesting too deep"},
        {"real number overflow", "number out of range"},
        {"too big integer", "integer out of the int64 range"},
        {"string or '}' expected", "object key (a string) expected"},
    };
    const char *ours = NULL, *near = strstr(e->text, " near ");
    for (size_t k = 0; k < sizeof words / sizeof *words && !ours; k++)
        if (strncmp(e->text, words[k].theirs, strlen(words[k].theirs)) == 0) ours = words[k].ours;
    const char *tok = near ? near + 7 : ""; /* past " near '" */
    if (!ours && strncmp(e->text, "premature end of input", 22) == 0)
        ours = tok[0] == '"' ? "unterminated string" : "unexpected end of input";
    if (!ours && strncmp(e->text, "invalid token", 13) == 0)
        ours = (tok[0] >= '0' && tok[0] <= '9') || tok[0] == '-' || tok[0] == '+' || tok[0] == '.'
                   ? "malformed number (a leading zero, a sign or no digit after '.' or 'e')"
               : (tok[0] >= 'a' && tok[0] <= 'z') || (tok[0] >= 'A' && tok[0] <= 'Z')
                   ? "unknown literal (only true, false and null)"
                   : "unexpected character";
    char what[200];
    if (!ours) { /* anything else: jansson's words up to "near", printable */
        size_t n = near ? (size_t)(near - e->text) : strlen(e->text);
        snprintf(what, sizeof what, "%.*s", (int)(n < 120 ? n : 120), e->text);
        for (char *p = what; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f) *p = '?';
        ours = what;
    }
    if (ours == words[0].ours && near) { /* duplicate key "<the key as written>" */
        char key[64];
        size_t n = 0;
        for (const char *p = tok; *p && *p != '\'' && n + 1 < sizeof key; p++)
            key[n++] = (unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f ? '?' : *p;
        key[n] = '\0';
        snprintf(err, errlen, "duplicate key %s at byte %d", key, e->position);
        return;
    }
    snprintf(err, errlen, "%s at byte %d", ours, e->position);
}

/* After a reparse with integers as doubles: a whole number of magnitude up to 2^53 is
 * exact and an integer again; larger ones are not (a double rounds them). */
static void mark_exact(json_value_t *v) {
    if (v->type == JV_NUMBER && v->num >= -9007199254740992.0 && v->num <= 9007199254740992.0 &&
        v->num == (double)(int64_t)v->num) {
        v->is_int = 1;
        v->i = (int64_t)v->num;
    }
    if (v->type == JV_ARRAY || v->type == JV_OBJECT)
        for (int k = 0; k < v->n; k++)
            mark_exact(&v->items[k]);
}

int json_parse(json_value_t **out, const char *text, size_t len, char *err, size_t errlen) {
    *out = NULL;
    if (errlen) err[0] = '\0';
    json_error_t e;
    /* JSON_DECODE_ANY: any value at the top (the callers check it is an object) */
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    int as_real = 0;
    if (!j && strncmp(e.text, "too big integer", 15) == 0) {
        /* A shape or offset beyond int64 should be reported by the reader that knows the
         * field (safetensors.c: "shape[0] is not a non-negative integer"), as our own
         * parser did: read such a header again with every integer as a double; an exact
         * integer is then only one that a double holds exactly (ours). */
        as_real = 1;
        j = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &e);
    }
    if (!j) {
        if (errlen) explain(&e, err, errlen);
        return strncmp(e.text, "out of memory", 13) == 0 ? MIMIC_ENOMEM : MIMIC_EFORMAT;
    }
    json_value_t *v = calloc(1, sizeof *v);
    conv_t c = {err, errlen};
    int rc = v ? convert(&c, j, v, 0) : MIMIC_ENOMEM;
    json_decref(j);
    if (rc == MIMIC_ENOMEM && errlen) snprintf(err, errlen, "out of memory");
    if (rc) {
        json_destroy(&v);
        return rc;
    }
    if (as_real) mark_exact(v);
    *out = v;
    return 0;
}

void json_destroy(json_value_t **v) {
    if (!v || !*v) return;
    value_clear(*v);
    free(*v);
    *v = NULL;
}

const json_value_t *json_get(const json_value_t *obj, const char *key) {
    if (!obj || obj->type != JV_OBJECT) return NULL;
    size_t n = strlen(key);
    for (int k = 0; k < obj->n; k++)
        if (obj->keys[k].len == n && memcmp(obj->keys[k].str, key, n) == 0) return &obj->items[k];
    return NULL;
}

static void emit(char *dst, size_t cap, size_t *n, const char *text) {
    for (; *text; text++, (*n)++)
        if (*n + 1 < cap) dst[*n] = *text;
}

size_t json_escape(char *dst, size_t cap, const char *s) {
    size_t n = 0;
    emit(dst, cap, &n, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char buf[8] = {(char)*c, 0};
        switch (*c) {
        case '"':
            emit(dst, cap, &n, "\\\"");
            break;
        case '\\':
            emit(dst, cap, &n, "\\\\");
            break;
        case '\n':
            emit(dst, cap, &n, "\\n");
            break;
        case '\r':
            emit(dst, cap, &n, "\\r");
            break;
        case '\t':
            emit(dst, cap, &n, "\\t");
            break;
        case '\b':
            emit(dst, cap, &n, "\\b");
            break;
        case '\f':
            emit(dst, cap, &n, "\\f");
            break;
        default:
            if (*c < 0x20) snprintf(buf, sizeof buf, "\\u%04x", *c);
            emit(dst, cap, &n, buf);
        }
    }
    emit(dst, cap, &n, "\"");
    if (cap) dst[n < cap ? n : cap - 1] = '\0';
    return n;
}
