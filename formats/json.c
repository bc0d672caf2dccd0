#include "json.h"

#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
} parser_t;

static int fail(parser_t *p, const char *what) {
    if (p->errlen) snprintf(p->err, p->errlen, "%s at byte %zu", what, p->pos);
    return MIMIC_EFORMAT;
}

static int nomem(parser_t *p) {
    if (p->errlen) snprintf(p->err, p->errlen, "out of memory at byte %zu", p->pos);
    return MIMIC_ENOMEM;
}

static void skip_ws(parser_t *p) {
    while (p->pos < p->len) {
        unsigned char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* Frees what v owns (not v itself). */
static void value_clear(json_value_t *v) {
    if (v->type == JSON_STRING) free(v->str);
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
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

static int hex4(parser_t *p, unsigned *out) {
    if (p->len - p->pos < 4) return fail(p, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = p->s[p->pos + (size_t)k];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return fail(p, "bad hex digit in \\u escape");
        v = (v << 4) | d;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* \uXXXX (already past the 'u'), joining a surrogate pair into one code point. */
static int unicode_escape(parser_t *p, unsigned *cp) {
    int rc = hex4(p, cp);
    if (rc) return rc;
    if (*cp >= 0xDC00 && *cp <= 0xDFFF) return fail(p, "lone low surrogate");
    if (*cp < 0xD800 || *cp > 0xDBFF) return 0;
    if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u')
        return fail(p, "high surrogate without low surrogate");
    p->pos += 2;
    unsigned lo = 0;
    if ((rc = hex4(p, &lo))) return rc;
    if (lo < 0xDC00 || lo > 0xDFFF) return fail(p, "high surrogate without low surrogate");
    *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
    return 0;
}

static int parse_string(parser_t *p, json_value_t *v) {
    p->pos++; /* opening quote */
    /* The decoded text is never longer than the source span, so size the buffer by it. */
    size_t end = p->pos;
    while (end < p->len && p->s[end] != '"')
        end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail(p, "unterminated string");
    char *out = malloc(end - p->pos + 1);
    if (!out) return nomem(p);
    size_t n = 0;
    int rc = 0;
    while (p->s[p->pos] != '"') {
        unsigned char c = p->s[p->pos];
        if (c < 0x20) {
            rc = fail(p, "control character in string");
            goto fail;
        }
        if (c != '\\') {
            size_t k = utf8_seq(p->s + p->pos, p->len - p->pos);
            if (!k) {
                rc = fail(p, "invalid UTF-8 in string");
                goto fail;
            }
            memcpy(out + n, p->s + p->pos, k);
            n += k;
            p->pos += k;
            continue;
        }
        p->pos++;
        char e = (char)p->s[p->pos++];
        unsigned cp = 0;
        switch (e) {
        case '"':
            out[n++] = '"';
            break;
        case '\\':
            out[n++] = '\\';
            break;
        case '/':
            out[n++] = '/';
            break;
        case 'b':
            out[n++] = '\b';
            break;
        case 'f':
            out[n++] = '\f';
            break;
        case 'n':
            out[n++] = '\n';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 't':
            out[n++] = '\t';
            break;
        case 'u':
            if ((rc = unicode_escape(p, &cp))) goto fail;
            n += put_utf8(out + n, cp);
            break;
        default:
            p->pos--;
            rc = fail(p, "bad escape in string");
            goto fail;
        }
    }
    p->pos++; /* closing quote */
    out[n] = '\0';
    v->type = JSON_STRING;
    v->str = out;
    v->len = n;
    return 0;
fail:
    free(out);
    return rc;
}

static int parse_number(parser_t *p, json_value_t *v) {
    size_t start = p->pos;
    const unsigned char *s = p->s;
    int neg = 0, integral = 1;
    if (p->pos < p->len && s[p->pos] == '-') neg = 1, p->pos++;
    if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9') return fail(p, "bad number");
    if (s[p->pos] == '0') {
        p->pos++;
        if (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9')
            return fail(p, "leading zero in number");
    } else {
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9')
            p->pos++;
    }
    size_t int_end = p->pos;
    if (p->pos < p->len && s[p->pos] == '.') {
        integral = 0;
        p->pos++;
        if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9')
            return fail(p, "digit expected after '.'");
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < p->len && (s[p->pos] == 'e' || s[p->pos] == 'E')) {
        integral = 0;
        p->pos++;
        if (p->pos < p->len && (s[p->pos] == '+' || s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || s[p->pos] < '0' || s[p->pos] > '9')
            return fail(p, "digit expected in exponent");
        while (p->pos < p->len && s[p->pos] >= '0' && s[p->pos] <= '9')
            p->pos++;
    }
    size_t toklen = p->pos - start;
    char small[64], *tok = toklen < sizeof small ? small : malloc(toklen + 1);
    if (!tok) return nomem(p);
    memcpy(tok, s + start, toklen);
    tok[toklen] = '\0';
    v->type = JSON_NUMBER;
    v->num = strtod(tok, NULL);
    if (tok != small) free(tok);
    if (integral) {
        /* Exact integer path: offsets and shapes must not go through a double. */
        uint64_t mag = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        int fits = 1;
        for (size_t k = start + (size_t)neg; k < int_end && fits; k++) {
            unsigned d = s[k] - '0';
            if (mag > (limit - d) / 10)
                fits = 0;
            else
                mag = mag * 10 + d;
        }
        if (fits) {
            v->is_int = 1;
            v->i =
                neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
        }
    }
    return 0;
}

static int parse_value(parser_t *p, json_value_t *v, int depth);

/* Appends one zeroed slot to a growing item array. */
static json_value_t *grow(json_value_t **arr, int n, int *cap) {
    if (n == *cap) {
        int ncap = *cap ? *cap * 2 : 4;
        json_value_t *a = realloc(*arr, (size_t)ncap * sizeof *a);
        if (!a) return NULL;
        *arr = a;
        *cap = ncap;
    }
    memset(&(*arr)[n], 0, sizeof **arr);
    return &(*arr)[n];
}

static int parse_array(parser_t *p, json_value_t *v, int depth) {
    int cap = 0;
    v->type = JSON_ARRAY;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return 0;
    }
    for (;;) {
        json_value_t *item = grow(&v->items, v->n, &cap);
        if (!item) return nomem(p);
        v->n++; /* counted before parsing so that a failure frees what it built */
        int rc = parse_value(p, item, depth + 1);
        if (rc) return rc;
        skip_ws(p);
        if (p->pos >= p->len) return fail(p, "unterminated array");
        if (p->s[p->pos] == ']') break;
        if (p->s[p->pos] != ',') return fail(p, "',' or ']' expected");
        p->pos++;
    }
    p->pos++;
    return 0;
}

static int key_cmp(const void *a, const void *b) {
    const json_value_t *x = *(const json_value_t *const *)a, *y = *(const json_value_t *const *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->str, y->str, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Sorting pointers keeps the check O(n log n) for headers with many tensors. */
static int check_unique_keys(parser_t *p, const json_value_t *v) {
    if (v->n < 2) return 0;
    const json_value_t **idx = malloc((size_t)v->n * sizeof *idx);
    if (!idx) return nomem(p);
    for (int k = 0; k < v->n; k++)
        idx[k] = &v->keys[k];
    qsort(idx, (size_t)v->n, sizeof *idx, key_cmp);
    int rc = 0;
    for (int k = 1; k < v->n && !rc; k++) {
        if (key_cmp(&idx[k - 1], &idx[k]) == 0) {
            /* the key comes from the file: control bytes (a newline, found by fuzz_safetensors)
             * would break the one-line message */
            char shown[101];
            size_t n = 0;
            for (; n < 100 && n < idx[k]->len; n++)
                shown[n] = (unsigned char)idx[k]->str[n] < 0x20 ? '?' : idx[k]->str[n];
            shown[n] = '\0';
            if (p->errlen)
                snprintf(p->err, p->errlen, "duplicate key \"%s\" in object ending at byte %zu",
                         shown, p->pos);
            rc = MIMIC_EFORMAT;
        }
    }
    free(idx);
    return rc;
}

static int parse_object(parser_t *p, json_value_t *v, int depth) {
    int cap = 0, kcap = 0, rc;
    v->type = JSON_OBJECT;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') {
        p->pos++;
        return 0;
    }
    for (;;) {
        if (p->pos >= p->len || p->s[p->pos] != '"') return fail(p, "string key expected");
        json_value_t *key = grow(&v->keys, v->n, &kcap);
        json_value_t *item = key ? grow(&v->items, v->n, &cap) : NULL;
        if (!item) return nomem(p);
        if ((rc = parse_string(p, key))) return rc;
        v->n++; /* counted now so that a failure below frees the key */
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':') return fail(p, "':' expected");
        p->pos++;
        if ((rc = parse_value(p, item, depth + 1))) return rc;
        skip_ws(p);
        if (p->pos >= p->len) return fail(p, "unterminated object");
        if (p->s[p->pos] == '}') break;
        if (p->s[p->pos] != ',') return fail(p, "',' or '}' expected");
        p->pos++;
        skip_ws(p);
    }
    p->pos++;
    return check_unique_keys(p, v);
}

static int literal(parser_t *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return fail(p, "bad literal");
    p->pos += n;
    return 0;
}

static int parse_value(parser_t *p, json_value_t *v, int depth) {
    if (depth > JSON_MAX_DEPTH) return fail(p, "nesting too deep");
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, "value expected");
    switch (p->s[p->pos]) {
    case '{':
        return parse_object(p, v, depth);
    case '[':
        return parse_array(p, v, depth);
    case '"':
        return parse_string(p, v);
    case 't':
        v->type = JSON_BOOL, v->boolean = 1;
        return literal(p, "true");
    case 'f':
        v->type = JSON_BOOL, v->boolean = 0;
        return literal(p, "false");
    case 'n':
        v->type = JSON_NULL;
        return literal(p, "null");
    default:
        if (p->s[p->pos] == '-' || (p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
            return parse_number(p, v);
        return fail(p, "unexpected character");
    }
}

int json_parse(json_value_t **out, const char *text, size_t len, char *err, size_t errlen) {
    parser_t p = {(const unsigned char *)text, len, 0, err, errlen};
    *out = NULL;
    if (errlen) err[0] = '\0';
    json_value_t *root = calloc(1, sizeof *root);
    if (!root) return nomem(&p);
    int rc = parse_value(&p, root, 1);
    if (!rc) {
        skip_ws(&p);
        if (p.pos != p.len) rc = fail(&p, "trailing characters after JSON value");
    }
    if (rc) {
        value_clear(root);
        free(root);
        return rc;
    }
    *out = root;
    return 0;
}

void json_destroy(json_value_t **v) {
    if (!v || !*v) return;
    value_clear(*v);
    free(*v);
    *v = NULL;
}

const json_value_t *json_get(const json_value_t *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
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
