/* Compiled fast paths of costsplit (optional: without a C compiler the package installs
 * without them and runs the same code in Python; tests/test_speedups.py holds both to the same
 * results).
 *
 * filter_chunk(exchange, data) returns what costsplit.record.Exchange.filter(data) returns. It
 * settles the usual chunks of a compatible-mode stream whose include_usage costsplit injected --
 * one whole event, one line ending in a blank line, nothing carried over from the chunk before
 * -- as Exchange.filter does in Python: it cuts the line's first "usage":null member with its
 * comma, and passes a line without the member that cannot be the usage-only event (not a data
 * line holding an object: [DONE]) as it is. Every other chunk goes to exchange.filter, so both
 * give the same bytes and leave the exchange in the same state.
 *
 * new_event_id() is costsplit.events.new_event_id: a UUIDv7 string (RFC 9562 section 5.7), 48
 * bits of Unix milliseconds then 74 random bits from a per-process xoshiro256** generator that
 * Python seeds from os.urandom with seed_event_ids(32 bytes), at import and in a forked child.
 *
 * pick_headers(items, names, prefix) is the selection costsplit.transport.header_items makes
 * from httpx's parsed header list (raw name, lower-case name, value; all bytes): the
 * (name, value) text pairs, lower-case names, of the headers whose lower-case name is in the
 * frozenset `names` or starts with `prefix`, decoded as ASCII (a UnicodeDecodeError otherwise,
 * which sends the caller to httpx's own decoding).
 *
 * drop_headers(items, names, prefix) is the rest of that list: the items, as they are, of the
 * headers pick_headers would not pick (what costsplit.transport._edit_headers keeps).
 *
 * kept_chunks(source, keep, exchange, limit) iterates over at most `limit` chunks of a response
 * body: each raw chunk goes to keep(chunk) as it passes, and the caller gets it as it is, or,
 * when `exchange` is not None, as filter_chunk(exchange, chunk) gives it (empty results left
 * out). One C iterator instead of five itertools layers per chunk; costsplit.transport holds
 * the same composed of itertools, where this was not built.
 *
 * fill_usual_end(event, payload, headers, endpoint) is costsplit.record._fill_usual_end -- the
 * request id, the model returned and the usage, reported, that a compatible answer's last JSON
 * (a stream's usage event, a non-streamed body) gives its event -- for the usage objects Model
 * Studio sends (plain non-negative integer counts, details of one API style); for anything
 * else it returns False, the event untouched, and Python does it.
 *
 * event_line(event) returns what costsplit.events.UsageEvent.to_json_line returns -- the same
 * bytes orjson writes for the version-2 line -- or None when a value is of a type it does not
 * write (a float, a subclass, a nested container, an integer beyond 64 bits, a string that is
 * not valid UTF-8): the caller then uses the Python writer. The fields, their order and how
 * each is left out are given once by events.py through set_event_fields, from the dataclass.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* memmem */
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX: how a __slots__ member is stored */
#include <stdint.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char USAGE_NULL[] = "\"usage\":null"; /* record.USAGE_NULL */
#define USAGE_NULL_LEN (sizeof(USAGE_NULL) - 1)

static PyObject *carry_name, *skip_blank_name, *filter_name;

/* The first "usage":null in the `size` bytes at `bytes`, or NULL. With SSE2 (every x86-64), 16
 * places at a time are tested for the member's first and last bytes together, and only those
 * holding both are compared whole: about four times as fast as glibc's memmem on a chunk of
 * Model Studio's. */
static const char *
find_usage_null(const char *bytes, Py_ssize_t size)
{
    Py_ssize_t at = 0;
#if defined(__SSE2__)
    const __m128i first = _mm_set1_epi8(USAGE_NULL[0]);
    const __m128i last = _mm_set1_epi8(USAGE_NULL[USAGE_NULL_LEN - 1]);
    for (; at + (Py_ssize_t)USAGE_NULL_LEN - 1 + 16 <= size; at += 16) {
        __m128i starts = _mm_loadu_si128((const __m128i *)(bytes + at));
        __m128i ends = _mm_loadu_si128((const __m128i *)(bytes + at + USAGE_NULL_LEN - 1));
        unsigned both = (unsigned)_mm_movemask_epi8(
            _mm_and_si128(_mm_cmpeq_epi8(starts, first), _mm_cmpeq_epi8(ends, last)));
        while (both != 0) {
            const char *place = bytes + at + __builtin_ctz(both);
            if (memcmp(place + 1, USAGE_NULL + 1, USAGE_NULL_LEN - 2) == 0) {
                return place;
            }
            both &= both - 1;
        }
    }
#endif
    return memmem(bytes + at, size - at, USAGE_NULL, USAGE_NULL_LEN);
}

static int
exchange_is_clean(PyObject *exchange)
{
    /* Nothing carried over and no blank line to skip; 0 when in doubt (the slow path). */
    PyObject *carry = PyObject_GetAttr(exchange, carry_name);
    if (carry == NULL) {
        PyErr_Clear();
        return 0;
    }
    int clean = PyBytes_CheckExact(carry) && PyBytes_GET_SIZE(carry) == 0;
    Py_DECREF(carry);
    if (!clean) {
        return 0;
    }
    PyObject *skip_blank = PyObject_GetAttr(exchange, skip_blank_name);
    if (skip_blank == NULL) {
        PyErr_Clear();
        return 0;
    }
    clean = skip_blank == Py_False;
    Py_DECREF(skip_blank);
    return clean;
}

/* Whether the bytes from `p` to `end` may be a JSON object: the first that is not ASCII
 * whitespace is '{' (costsplit.usage.may_be_object). */
static int
may_be_object(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || (*p >= '\t' && *p <= '\r'))) { /* \t \n \v \f \r */
        p++;
    }
    return p < end && *p == '{';
}

/* What the caller gets of the usual chunk -- one line and its blank line -- : without its first
 * "usage":null member and the comma after it, or, without the member, the chunk itself unless
 * it is a data line holding an object (maybe the usage-only event); NULL (no error set) for
 * any other. The exchange must be clean (exchange_is_clean): this reads nothing of it. */
static PyObject *
filter_usual_chunk(PyObject *data)
{
    if (!PyBytes_CheckExact(data)) {
        return NULL;
    }
    const char *bytes = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    const char *newline = size >= 2 ? memchr(bytes, '\n', size) : NULL;
    if (newline == NULL || newline != bytes + size - 2 || bytes[size - 1] != '\n') {
        return NULL;
    }
    const char *member = find_usage_null(bytes, size);
    if (member == NULL) {
        if (size >= 5 && memcmp(bytes, "data:", 5) == 0 && may_be_object(bytes + 5, bytes + size)) {
            return NULL;
        }
        return Py_NewRef(data);
    }
    const char *after = member + USAGE_NULL_LEN;
    if (after >= bytes + size || *after != ',') {
        return NULL;
    }
    Py_ssize_t start = member - bytes, cut = USAGE_NULL_LEN + 1;
    PyObject *out = PyBytes_FromStringAndSize(NULL, size - cut);
    if (out == NULL) {
        PyErr_Clear(); /* out of memory: the Python path decides what to do */
        return NULL;
    }
    char *to = PyBytes_AS_STRING(out);
    memcpy(to, bytes, start);
    memcpy(to + start, bytes + start + cut, size - start - cut);
    return out;
}

static PyObject *
filter_one(PyObject *exchange, PyObject *data)
{
    PyObject *out = exchange_is_clean(exchange) ? filter_usual_chunk(data) : NULL;
    return out != NULL ? out : PyObject_CallMethodOneArg(exchange, filter_name, data);
}

static PyObject *
filter_chunk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "filter_chunk(exchange, data) takes two arguments");
        return NULL;
    }
    return filter_one(args[0], args[1]);
}

/* -- kept chunks ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *source;   /* the body's chunks (an iterator) */
    PyObject *keep;     /* called with each raw chunk as it passes (the exchange keeps it) */
    PyObject *kept;     /* the list when keep is its append (appended to directly), or NULL */
    PyObject *exchange; /* filters what the caller gets; NULL: every chunk passes as it is */
    Py_ssize_t left;    /* chunks still to take from source */
    int clean;          /* 1 or 0: whether the exchange is clean; -1: to ask (after a chunk
                         * went to Exchange.filter, the one thing that changes it) */
} KeptChunks;

static PyTypeObject KeptChunksType;
static PyCFunction list_append; /* what a list's bound append calls, told at import */

/* The list whose bound append `keep` is, or NULL. */
static PyObject *
list_of_append(PyObject *keep)
{
    if (!PyCFunction_CheckExact(keep) || PyCFunction_GET_FUNCTION(keep) != list_append) {
        return NULL;
    }
    PyObject *list = PyCFunction_GET_SELF(keep);
    return list != NULL && PyList_CheckExact(list) ? list : NULL;
}

static PyObject *
kept_chunks_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *source, *keep, *exchange;
    Py_ssize_t limit;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "kept_chunks takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOn:kept_chunks", &source, &keep, &exchange, &limit)) {
        return NULL;
    }
    PyObject *iterator = PyObject_GetIter(source);
    if (iterator == NULL) {
        return NULL;
    }
    KeptChunks *self = PyObject_GC_New(KeptChunks, type);
    if (self == NULL) {
        Py_DECREF(iterator);
        return NULL;
    }
    self->source = iterator;
    self->keep = Py_NewRef(keep);
    self->kept = Py_XNewRef(list_of_append(keep));
    self->exchange = exchange == Py_None ? NULL : Py_NewRef(exchange);
    self->left = limit;
    self->clean = -1; /* not asked yet */
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
kept_chunks_traverse(KeptChunks *self, visitproc visit, void *arg)
{
    Py_VISIT(self->source);
    Py_VISIT(self->keep);
    Py_VISIT(self->kept);
    Py_VISIT(self->exchange);
    return 0;
}

static int
kept_chunks_clear(KeptChunks *self)
{
    Py_CLEAR(self->source);
    Py_CLEAR(self->keep);
    Py_CLEAR(self->kept);
    Py_CLEAR(self->exchange);
    return 0;
}

static void
kept_chunks_dealloc(KeptChunks *self)
{
    PyObject_GC_UnTrack(self);
    kept_chunks_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
kept_chunks_next(KeptChunks *self)
{
    while (self->left > 0 && self->source != NULL) {
        PyObject *chunk = PyIter_Next(self->source);
        if (chunk == NULL) {
            return NULL; /* the body ended, or its error goes on to the caller */
        }
        self->left--;
        if (self->kept != NULL) {
            if (PyList_Append(self->kept, chunk) < 0) {
                Py_DECREF(chunk);
                return NULL;
            }
        }
        else {
            PyObject *kept = PyObject_CallOneArg(self->keep, chunk);
            if (kept == NULL) {
                Py_DECREF(chunk);
                return NULL;
            }
            Py_DECREF(kept);
        }
        if (self->exchange == NULL) {
            return chunk;
        }
        if (self->clean < 0) {
            self->clean = exchange_is_clean(self->exchange);
        }
        PyObject *out = self->clean ? filter_usual_chunk(chunk) : NULL;
        if (out == NULL) {
            out = PyObject_CallMethodOneArg(self->exchange, filter_name, chunk);
            self->clean = -1; /* Exchange.filter may carry a line over, or skip a blank one */
        }
        Py_DECREF(chunk);
        if (out == NULL) {
            return NULL;
        }
        int nonempty = PyBytes_CheckExact(out) ? PyBytes_GET_SIZE(out) > 0 : PyObject_IsTrue(out);
        if (nonempty != 0) {
            if (nonempty < 0) {
                Py_CLEAR(out);
            }
            return out;
        }
        Py_DECREF(out); /* all of it was the usage costsplit asked for: nothing to pass on */
    }
    return NULL;
}

static PyTypeObject KeptChunksType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "costsplit._speedups.kept_chunks",
    .tp_basicsize = sizeof(KeptChunks),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "kept_chunks(source, keep, exchange, limit): at most limit chunks of source, "
              "each given to keep as it passes, filtered by exchange unless it is None "
              "(empty results left out).",
    .tp_new = kept_chunks_new,
    .tp_traverse = (traverseproc)kept_chunks_traverse,
    .tp_clear = (inquiry)kept_chunks_clear,
    .tp_dealloc = (destructor)kept_chunks_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)kept_chunks_next,
};

static uint64_t id_state[4]; /* xoshiro256**, seeded by seed_event_ids */
static int id_seeded = 0;

static uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t
next_random(void)
{
    uint64_t result = rotl(id_state[1] * 5, 7) * 9, t = id_state[1] << 17;
    id_state[2] ^= id_state[0];
    id_state[3] ^= id_state[1];
    id_state[1] ^= id_state[2];
    id_state[0] ^= id_state[3];
    id_state[2] ^= t;
    id_state[3] = rotl(id_state[3], 45);
    return result;
}

static PyObject *
seed_event_ids(PyObject *module, PyObject *seed)
{
    if (!PyBytes_Check(seed) || PyBytes_GET_SIZE(seed) != sizeof(id_state)) {
        PyErr_SetString(PyExc_ValueError, "seed_event_ids takes 32 bytes");
        return NULL;
    }
    memcpy(id_state, PyBytes_AS_STRING(seed), sizeof(id_state));
    if ((id_state[0] | id_state[1] | id_state[2] | id_state[3]) == 0) {
        id_state[0] = 1; /* the one state xoshiro never leaves */
    }
    id_seeded = 1;
    Py_RETURN_NONE;
}

static PyObject *
new_event_id(PyObject *module, PyObject *unused)
{
    static const char hex[] = "0123456789abcdef";
    if (!id_seeded) {
        PyErr_SetString(PyExc_RuntimeError, "seed_event_ids was not called");
        return NULL;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
    uint64_t rand_a = next_random(), rand_b = next_random();
    uint64_t high = (ms & 0xFFFFFFFFFFFFULL) << 16 | 0x7000 | (rand_a >> 52);  /* version 7 */
    uint64_t low = 0x8000000000000000ULL | (rand_b >> 2);  /* variant 10, 62 random bits */
    char text[36];
    int at = 0;
    for (int nibble = 0; nibble < 32; nibble++) {
        if (nibble == 8 || nibble == 12 || nibble == 16 || nibble == 20) {
            text[at++] = '-';
        }
        uint64_t word = nibble < 16 ? high : low;
        text[at++] = hex[(word >> (60 - 4 * (nibble % 16))) & 0xF];
    }
    return PyUnicode_FromStringAndSize(text, sizeof(text));
}

/* -- headers ------------------------------------------------------------------------------ */

/* Whether an item of httpx's header list -- (raw name, lower-case name, value), all bytes --
 * is named: its lower-case name is in `names` or starts with `prefix`; -1 with TypeError set
 * for an item of another shape. */
static int
header_named(PyObject *item, PyObject *names, PyObject *prefix, const char *function)
{
    if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3 ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 1)) ||
        !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 2))) {
        PyErr_Format(PyExc_TypeError, "%s: an item is not (bytes, bytes, bytes)", function);
        return -1;
    }
    PyObject *name = PyTuple_GET_ITEM(item, 1);
    Py_ssize_t prefix_size = PyBytes_GET_SIZE(prefix);
    if (PyBytes_GET_SIZE(name) >= prefix_size &&
        memcmp(PyBytes_AS_STRING(name), PyBytes_AS_STRING(prefix), prefix_size) == 0) {
        return 1;
    }
    return PySet_Contains(names, name);
}

static int
header_arguments(PyObject *const *args, Py_ssize_t nargs, const char *usage)
{
    if (nargs != 3 || !PyList_CheckExact(args[0]) || !PyFrozenSet_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return 0;
    }
    return 1;
}

static PyObject *
pick_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!header_arguments(args, nargs, "pick_headers(list, frozenset, bytes)")) {
        return NULL;
    }
    PyObject *items = args[0], *names = args[1], *prefix = args[2];
    PyObject *picked = PyList_New(0);
    if (picked == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        int wanted = header_named(item, names, prefix, "pick_headers");
        if (wanted < 0) {
            goto failed;
        }
        if (!wanted) {
            continue;
        }
        PyObject *name = PyTuple_GET_ITEM(item, 1), *value = PyTuple_GET_ITEM(item, 2);
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            goto failed;
        }
        PyObject *text_name = PyUnicode_DecodeASCII(PyBytes_AS_STRING(name),
                                                    PyBytes_GET_SIZE(name), "strict");
        PyTuple_SET_ITEM(pair, 0, text_name);
        PyObject *text_value = text_name == NULL ? NULL
                                                 : PyUnicode_DecodeASCII(PyBytes_AS_STRING(value),
                                                                         PyBytes_GET_SIZE(value),
                                                                         "strict");
        PyTuple_SET_ITEM(pair, 1, text_value);
        if (text_value == NULL || PyList_Append(picked, pair) < 0) {
            Py_DECREF(pair); /* frees what was decoded; a NULL slot is skipped */
            goto failed;
        }
        Py_DECREF(pair);
    }
    return picked;
failed:
    Py_DECREF(picked);
    return NULL;
}

static PyObject *
drop_headers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!header_arguments(args, nargs, "drop_headers(list, frozenset, bytes)")) {
        return NULL;
    }
    PyObject *items = args[0], *names = args[1], *prefix = args[2];
    PyObject *kept = PyList_New(0);
    if (kept == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        int named = header_named(item, names, prefix, "drop_headers");
        if (named < 0 || (!named && PyList_Append(kept, item) < 0)) {
            Py_DECREF(kept);
            return NULL;
        }
    }
    return kept;
}

/* -- event lines ---------------------------------------------------------------------------- */

enum { WRITE_ALWAYS, SKIP_FALSY, SKIP_NONE, SKIP_DEFAULT };

typedef struct {
    PyObject *key;        /* bytes: ',"name":' (the first field without its comma) */
    PyObject *descriptor; /* the slot's member descriptor (kept alive for offset) */
    Py_ssize_t offset;    /* where the slot's object pointer sits in the instance */
    PyObject *value;      /* a constant written instead of the slot's value, or NULL */
    PyObject *fallback;   /* the default compared against (SKIP_DEFAULT), or NULL */
    int rule;
} EventField;

static EventField *event_fields = NULL;
static PyObject *zero, *empty_text; /* the usual falsy values, told by identity first */
static Py_ssize_t event_field_count = 0;
static PyTypeObject *event_type = NULL;

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
    char inline_space[2048];
} Buffer;

static int
buffer_reserve(Buffer *buffer, Py_ssize_t more)
{
    if (buffer->size + more <= buffer->capacity) {
        return 0;
    }
    Py_ssize_t capacity = (buffer->size + more) * 2;
    char *data;
    if (buffer->data == buffer->inline_space) {
        data = PyMem_Malloc(capacity);
        if (data != NULL) {
            memcpy(data, buffer->data, buffer->size);
        }
    }
    else {
        data = PyMem_Realloc(buffer->data, capacity);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = data;
    buffer->capacity = capacity;
    return 0;
}

static int
buffer_add(Buffer *buffer, const char *bytes, Py_ssize_t size)
{
    if (buffer_reserve(buffer, size) < 0) {
        return -1;
    }
    memcpy(buffer->data + buffer->size, bytes, size);
    buffer->size += size;
    return 0;
}

/* Bytes a JSON string escapes: control characters, the quote and the backslash (orjson writes
 * everything else, DEL and all of UTF-8 included, as it is). */
static char escaped[256];

/* 1: written; 0: a value this writer does not write (the caller falls back); -1: an error. */
static int
write_string(Buffer *buffer, PyObject *text)
{
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (utf8 == NULL) {
        PyErr_Clear(); /* lone surrogates: the Python writer raises its own error */
        return 0;
    }
    if (buffer_reserve(buffer, size * 6 + 2) < 0) { /* \u00XX is the longest escape */
        return -1;
    }
    char *out = buffer->data + buffer->size;
    *out++ = '"';
    Py_ssize_t i = 0;
    while (i < size) {
        Py_ssize_t run = i;
        while (run < size && !escaped[(unsigned char)utf8[run]]) {
            run++;
        }
        memcpy(out, utf8 + i, run - i); /* a run of bytes that go as they are */
        out += run - i;
        if (run == size) {
            break;
        }
        unsigned char c = (unsigned char)utf8[run];
        i = run + 1;
        *out++ = '\\';
        switch (c) {
        case '"': *out++ = '"'; break;
        case '\\': *out++ = '\\'; break;
        case '\b': *out++ = 'b'; break;
        case '\t': *out++ = 't'; break;
        case '\n': *out++ = 'n'; break;
        case '\f': *out++ = 'f'; break;
        case '\r': *out++ = 'r'; break;
        default:
            *out++ = 'u';
            *out++ = '0';
            *out++ = '0';
            *out++ = hex[c >> 4];
            *out++ = hex[c & 0xF];
        }
    }
    *out++ = '"';
    buffer->size = out - buffer->data;
    return 1;
}

static int
write_scalar(Buffer *buffer, PyObject *value)
{
    if (PyUnicode_CheckExact(value)) {
        return write_string(buffer, value);
    }
    if (value == Py_None) {
        return buffer_add(buffer, "null", 4) < 0 ? -1 : 1;
    }
    if (value == Py_True) {
        return buffer_add(buffer, "true", 4) < 0 ? -1 : 1;
    }
    if (value == Py_False) {
        return buffer_add(buffer, "false", 5) < 0 ? -1 : 1;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow) {
            return 0;
        }
        char digits[24], *end = digits + sizeof(digits), *at = end;
        unsigned long long magnitude = number < 0 ? 0ULL - (unsigned long long)number
                                                  : (unsigned long long)number;
        do {
            *--at = (char)('0' + magnitude % 10);
            magnitude /= 10;
        } while (magnitude);
        if (number < 0) {
            *--at = '-';
        }
        return buffer_add(buffer, at, end - at) < 0 ? -1 : 1;
    }
    return 0;
}

static int
write_value(Buffer *buffer, PyObject *value)
{
    if (!PyDict_CheckExact(value)) {
        return write_scalar(buffer, value);
    }
    /* tags (text) and plugins (counts): an object of scalars (write_scalar refuses the rest) */
    Py_ssize_t position = 0;
    PyObject *key, *item;
    char separator = '{';
    while (PyDict_Next(value, &position, &key, &item)) {
        if (!PyUnicode_CheckExact(key)) {
            return 0;
        }
        if (buffer_add(buffer, &separator, 1) < 0) {
            return -1;
        }
        separator = ',';
        int done = write_string(buffer, key);
        if (done == 1) {
            done = buffer_add(buffer, ":", 1) < 0 ? -1 : write_scalar(buffer, item);
        }
        if (done != 1) {
            return done;
        }
    }
    if (separator == '{') {
        return buffer_add(buffer, "{}", 2) < 0 ? -1 : 1;
    }
    return buffer_add(buffer, "}", 1) < 0 ? -1 : 1;
}

/* 1: leave the field out; 0: write it; -1: an error. */
static int
left_out(const EventField *field, PyObject *value)
{
    switch (field->rule) {
    case SKIP_FALSY: {
        if (value == zero || value == empty_text || value == Py_None || value == Py_False) {
            return 1;
        }
        int truth = PyObject_IsTrue(value);
        return truth < 0 ? -1 : !truth;
    }
    case SKIP_NONE:
        return value == Py_None;
    case SKIP_DEFAULT: {
        int differs = PyObject_RichCompareBool(value, field->fallback, Py_NE);
        return differs < 0 ? -1 : !differs;
    }
    default:
        return 0;
    }
}

static PyObject *
event_line(PyObject *module, PyObject *event)
{
    if (event_fields == NULL || Py_TYPE(event) != event_type) {
        Py_RETURN_NONE;
    }
    Buffer buffer;
    buffer.data = buffer.inline_space;
    buffer.size = 0;
    buffer.capacity = sizeof(buffer.inline_space);
    PyObject *result = NULL;
    if (buffer_add(&buffer, "{", 1) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < event_field_count; i++) {
        const EventField *field = &event_fields[i];
        PyObject *value = field->value;
        if (value != NULL) {
            Py_INCREF(value);
        }
        else {
            value = *(PyObject **)((char *)event + field->offset);
            if (value == NULL) { /* a slot never set: the Python writer raises for it */
                result = Py_NewRef(Py_None);
                goto done;
            }
            Py_INCREF(value);
        }
        int outcome = left_out(field, value); /* 1: left out, 0: to write, -1: error */
        if (outcome == 0) {
            outcome = buffer_add(&buffer, PyBytes_AS_STRING(field->key),
                                 PyBytes_GET_SIZE(field->key));
            if (outcome == 0) {
                outcome = write_value(&buffer, value); /* 1: written, 0: not writable here */
            }
            if (outcome == 0) {
                Py_DECREF(value);
                result = Py_NewRef(Py_None);
                goto done;
            }
        }
        Py_DECREF(value);
        if (outcome < 0) {
            goto done;
        }
    }
    if (buffer_add(&buffer, "}\n", 2) == 0) {
        result = PyBytes_FromStringAndSize(buffer.data, buffer.size);
    }
done:
    if (buffer.data != buffer.inline_space) {
        PyMem_Free(buffer.data);
    }
    return result;
}

static PyObject *
set_event_fields(PyObject *module, PyObject *args)
{
    PyObject *type, *fields;
    if (!PyArg_ParseTuple(args, "O!O!", &PyType_Type, &type, &PyTuple_Type, &fields)) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(fields);
    EventField *table = PyMem_Calloc(count ? count : 1, sizeof(EventField));
    if (table == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key, *descriptor, *value, *fallback;
        int rule;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "O!OOOi", &PyBytes_Type, &key,
                              &descriptor, &value, &fallback, &rule)) {
            goto failed;
        }
        if (!Py_IS_TYPE(descriptor, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descriptor)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "field %zd is not a __slots__ member", i);
            goto failed;
        }
        if (rule < WRITE_ALWAYS || rule > SKIP_DEFAULT) {
            PyErr_Format(PyExc_ValueError, "field %zd: unknown rule %d", i, rule);
            goto failed;
        }
        table[i].key = Py_NewRef(key);
        table[i].descriptor = Py_NewRef(descriptor);
        table[i].offset = ((PyMemberDescrObject *)descriptor)->d_member->offset;
        table[i].value = value == Py_None ? NULL : Py_NewRef(value);
        table[i].fallback = Py_NewRef(fallback);
        table[i].rule = rule;
    }
    /* installed once per process (events.py at import); an earlier table stays referenced */
    event_fields = table;
    event_field_count = count;
    event_type = (PyTypeObject *)Py_NewRef(type);
    Py_RETURN_NONE;
failed:
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_XDECREF(table[i].key);
        Py_XDECREF(table[i].descriptor);
        Py_XDECREF(table[i].value);
        Py_XDECREF(table[i].fallback);
    }
    PyMem_Free(table);
    return NULL;
}


/* -- the usual end of a stream ---------------------------------------------------------- */

/* fill_usual_end(event, payload, headers, endpoint) is costsplit.record._fill_usual_end for the
 * usage objects Model Studio sends: counts that are plain non-negative integers, under the
 * plain keys and the details objects of one API style. It returns False, the event untouched,
 * for anything else -- an error, no usage, a float, a negative or huge count, another key --
 * and the caller then does it in Python. */

#define MAX_COUNT 1000000000000000LL /* beyond this, Python's integers take over */

enum { IN_TOTAL, OUT_TOTAL, TOTAL, CACHED, CACHE_CREATION, REASONING, IMAGE, AUDIO, VIDEO,
       AUDIO_OUTPUT, COUNTS };

static PyObject *usage_names[COUNTS]; /* the event's field of each count */
static PyObject *cache_type_name, *usage_source_name, *request_id_name, *model_returned_name,
    *image_count_name, *plugins_name, *reported_text;

typedef struct {
    const char *key;
    int count; /* an index into the counts, or -1: cache_type */
} DetailKey;

static const DetailKey input_details[] = {
    {"cached_tokens", CACHED}, {"cache_creation_input_tokens", CACHE_CREATION},
    {"cache_type", -1},        {"image_tokens", IMAGE},
    {"audio_tokens", AUDIO},   {"video_tokens", VIDEO},
    {NULL, 0},
};
static const DetailKey output_details[] = {
    {"reasoning_tokens", REASONING}, {"audio_tokens", AUDIO_OUTPUT}, {NULL, 0},
};

/* A count as usage._count reads it, for the values that are plain: 1 and *count set for an
 * int (a negative one is no count: *count = -1), 0 for no value at all (absent, None, bool,
 * text, ...: also no count), -1 for what the Python path must read (a float, a huge int). */
static int
plain_count(PyObject *value, long long *count)
{
    *count = -1;
    if (value == NULL || value == Py_None) {
        return 0;
    }
    if (PyFloat_Check(value)) {
        return -1;
    }
    if (!PyLong_CheckExact(value)) {
        return 0; /* bool, text, containers: _count gives None */
    }
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow != 0 || number > MAX_COUNT || (number == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    *count = number >= 0 ? number : -1;
    return 1;
}

/* The input (or output) total: `primary` when a non-negative int, else `secondary` as
 * usage._first reads it; -1 in *count for none; returns -1 for the Python path. */
static int
first_count(PyObject *primary, PyObject *secondary, long long *count)
{
    long long value;
    int kind = plain_count(primary, &value);
    if (kind == 1 && value >= 0) {
        *count = value;
        return 1;
    }
    if (primary != NULL && primary != Py_None) {
        return -1; /* a negative, a float or anything odd first: leave _first to Python */
    }
    kind = plain_count(secondary, &value);
    if (kind < 0 || (kind == 0 && secondary != NULL && secondary != Py_None)) {
        return -1;
    }
    *count = value;
    return 1;
}

static int
read_details(PyObject *details, const DetailKey *keys, long long *counts, PyObject **cache_type)
{
    if (!PyDict_Check(details)) {
        return 1; /* normalise_usage skips details that are not an object */
    }
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(details, &at, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            continue;
        }
        for (const DetailKey *k = keys; k->key != NULL; k++) {
            if (PyUnicode_CompareWithASCIIString(key, k->key) != 0) {
                continue;
            }
            if (k->count < 0) {
                *cache_type = PyUnicode_Check(value) ? value : empty_text;
            }
            else {
                long long count;
                if (plain_count(value, &count) < 0) {
                    return -1;
                }
                counts[k->count] = count >= 0 ? count : 0;
            }
            break;
        }
    }
    return 1;
}

/* usage.normalise_usage and Usage.consistent for a plain usage object: 1 with the counts and
 * *cache_type set, 0 for no usage at all, -1 for the Python path. */
static int
plain_usage(PyObject *raw, PyObject *endpoint, long long *counts, PyObject **cache_type)
{
    if (!PyDict_CheckExact(raw)) {
        return -1;
    }
    /* prompt, completion, input, output, total */
    PyObject *plain[5] = {NULL, NULL, NULL, NULL, NULL};
    static const char *plain_keys[5] = {"prompt_tokens", "completion_tokens", "input_tokens",
                                        "output_tokens", "total_tokens"};
    PyObject *details[4] = {NULL, NULL, NULL, NULL}; /* prompt_, completion_, input_, output_ */
    static const char *detail_keys[4] = {"prompt_tokens_details", "completion_tokens_details",
                                         "input_tokens_details", "output_tokens_details"};
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(raw, &at, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            return -1;
        }
        int known = 0; /* compared whole: a key with a NUL inside is another key */
        for (int i = 0; i < 5 && !known; i++) {
            if (PyUnicode_CompareWithASCIIString(key, plain_keys[i]) == 0) {
                plain[i] = value;
                known = 1;
            }
        }
        for (int i = 0; i < 4 && !known; i++) {
            if (PyUnicode_CompareWithASCIIString(key, detail_keys[i]) == 0) {
                details[i] = value;
                known = 1;
            }
        }
        if (!known) {
            return -1; /* image_count, plugins, top-level subsets, anything else */
        }
    }
    if ((details[0] || details[1]) && (details[2] || details[3])) {
        return -1; /* both styles' details: the full lookup */
    }
    long long input, output, total;
    if (first_count(plain[0], plain[2], &input) < 0 ||
        first_count(plain[1], plain[3], &output) < 0 || plain_count(plain[4], &total) < 0) {
        return -1;
    }
    if (input < 0 && output < 0) {
        if (total < 0) {
            return 0;
        }
        if (PyUnicode_CompareWithASCIIString(endpoint, "embedding") == 0) {
            input = total;
        }
    }
    for (int i = 0; i < COUNTS; i++) {
        counts[i] = 0;
    }
    counts[IN_TOTAL] = input > 0 ? input : 0;
    counts[OUT_TOTAL] = output > 0 ? output : 0;
    counts[TOTAL] = total > 0 ? total : 0;
    *cache_type = empty_text;
    const DetailKey *styles[4] = {input_details, output_details, input_details, output_details};
    for (int i = 0; i < 4; i++) {
        if (details[i] != NULL && read_details(details[i], styles[i], counts, cache_type) < 0) {
            return -1;
        }
    }
    long long room = counts[IN_TOTAL]; /* Usage.consistent, in its order */
    if (counts[CACHED] > room) {
        counts[CACHED] = room;
    }
    if (counts[CACHE_CREATION] > room - counts[CACHED]) {
        counts[CACHE_CREATION] = room - counts[CACHED];
    }
    if (counts[IMAGE] > room) {
        counts[IMAGE] = room;
    }
    room -= counts[IMAGE];
    if (counts[AUDIO] > room) {
        counts[AUDIO] = room;
    }
    room -= counts[AUDIO];
    if (counts[VIDEO] > room) {
        counts[VIDEO] = room;
    }
    room = counts[OUT_TOTAL];
    if (counts[REASONING] > room) {
        counts[REASONING] = room;
    }
    if (counts[AUDIO_OUTPUT] > room - counts[REASONING]) {
        counts[AUDIO_OUTPUT] = room - counts[REASONING];
    }
    if (counts[TOTAL] < counts[IN_TOTAL] + counts[OUT_TOTAL]) {
        counts[TOTAL] = counts[IN_TOTAL] + counts[OUT_TOTAL];
    }
    return 1;
}

/* usage._text of payload[name]: the text, or the empty one (borrowed). */
static PyObject *
text_member(PyObject *mapping, const char *name)
{
    PyObject *value = PyDict_GetItemString(mapping, name);
    return value != NULL && PyUnicode_Check(value) ? value : empty_text;
}

static PyObject *
fill_usual_end(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) ||
        !PyUnicode_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "fill_usual_end(event, dict, dict, str)");
        return NULL;
    }
    PyObject *event = args[0], *payload = args[1], *headers = args[2], *endpoint = args[3];
    if (!PyDict_CheckExact(payload)) {
        Py_RETURN_FALSE;
    }
    PyObject *error = PyDict_GetItemString(payload, "error");
    PyObject *code = PyDict_GetItemString(payload, "code");
    if ((error != NULL && PyDict_Check(error)) ||
        (code != NULL && PyUnicode_Check(code) &&
         PyDict_GetItemString(payload, "output") == NULL)) {
        Py_RETURN_FALSE; /* an error envelope (maybe with an empty code): facts_of reads it */
    }
    PyObject *usage = PyDict_GetItemString(payload, "usage");
    long long counts[COUNTS];
    PyObject *cache_type = empty_text;
    if (usage == NULL || plain_usage(usage, endpoint, counts, &cache_type) <= 0) {
        Py_RETURN_FALSE;
    }
    PyObject *request_id = text_member(payload, "request_id");
    if (PyUnicode_GET_LENGTH(request_id) == 0) {
        request_id = text_member(headers, "x-request-id");
    }
    if (PyUnicode_GET_LENGTH(request_id) == 0) {
        request_id = text_member(headers, "x-dashscope-request-id");
    }
    if (PyUnicode_GET_LENGTH(request_id) == 0) {
        request_id = text_member(payload, "id");
    }
    PyObject *plugins = PyDict_New();
    if (plugins == NULL) {
        return NULL;
    }
    int failed = PyObject_SetAttr(event, request_id_name, request_id) < 0 ||
                 PyObject_SetAttr(event, model_returned_name, text_member(payload, "model")) < 0 ||
                 PyObject_SetAttr(event, usage_source_name, reported_text) < 0;
    for (int i = 0; i < COUNTS && !failed; i++) {
        PyObject *number = PyLong_FromLongLong(counts[i]);
        failed = number == NULL || PyObject_SetAttr(event, usage_names[i], number) < 0;
        Py_XDECREF(number);
    }
    failed = failed || PyObject_SetAttr(event, cache_type_name, cache_type) < 0 ||
             PyObject_SetAttr(event, image_count_name, zero) < 0 ||
             PyObject_SetAttr(event, plugins_name, plugins) < 0;
    Py_DECREF(plugins);
    if (failed) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"filter_chunk", (PyCFunction)(void (*)(void))filter_chunk, METH_FASTCALL,
     "filter_chunk(exchange, data): exchange.filter(data), the usual chunk settled in C."},
    {"new_event_id", new_event_id, METH_NOARGS,
     "new_event_id(): a UUIDv7 string, as costsplit.events.new_event_id."},
    {"seed_event_ids", seed_event_ids, METH_O,
     "seed_event_ids(seed): seed the id generator with 32 bytes from os.urandom."},
    {"pick_headers", (PyCFunction)(void (*)(void))pick_headers, METH_FASTCALL,
     "pick_headers(items, names, prefix): the header pairs costsplit reads, decoded."},
    {"drop_headers", (PyCFunction)(void (*)(void))drop_headers, METH_FASTCALL,
     "drop_headers(items, names, prefix): the items of the other headers, as they are."},
    {"fill_usual_end", (PyCFunction)(void (*)(void))fill_usual_end, METH_FASTCALL,
     "fill_usual_end(event, payload, headers, endpoint): record._fill_usual_end, plain usage."},
    {"event_line", event_line, METH_O,
     "event_line(event): UsageEvent.to_json_line(), or None where the Python writer must."},
    {"set_event_fields", set_event_fields, METH_VARARGS,
     "set_event_fields(type, fields): the line's fields, once, from costsplit.events."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "costsplit._speedups",
    .m_doc = "Compiled fast paths of costsplit.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    carry_name = PyUnicode_InternFromString("carry");
    skip_blank_name = PyUnicode_InternFromString("skip_blank");
    filter_name = PyUnicode_InternFromString("filter");
    for (int c = 0; c < 0x20; c++) {
        escaped[c] = 1;
    }
    escaped['"'] = escaped['\\'] = 1;
    zero = PyLong_FromLong(0);
    empty_text = PyUnicode_FromStringAndSize(NULL, 0);
    if (zero == NULL || empty_text == NULL) {
        return NULL;
    }
    if (carry_name == NULL || skip_blank_name == NULL || filter_name == NULL) {
        return NULL;
    }
    if (PyType_Ready(&KeptChunksType) < 0) {
        return NULL;
    }
    static const char *count_fields[COUNTS] = {
        "input_tokens",  "output_tokens", "total_tokens", "cached_tokens", "cache_creation_tokens",
        "reasoning_tokens", "image_tokens", "audio_tokens", "video_tokens", "audio_output_tokens"};
    for (int i = 0; i < COUNTS; i++) {
        usage_names[i] = PyUnicode_InternFromString(count_fields[i]);
        if (usage_names[i] == NULL) {
            return NULL;
        }
    }
    cache_type_name = PyUnicode_InternFromString("cache_type");
    usage_source_name = PyUnicode_InternFromString("usage_source");
    request_id_name = PyUnicode_InternFromString("request_id");
    model_returned_name = PyUnicode_InternFromString("model_returned");
    image_count_name = PyUnicode_InternFromString("image_count");
    plugins_name = PyUnicode_InternFromString("plugins");
    reported_text = PyUnicode_InternFromString("reported");
    if (cache_type_name == NULL || usage_source_name == NULL || request_id_name == NULL ||
        model_returned_name == NULL || image_count_name == NULL || plugins_name == NULL ||
        reported_text == NULL) {
        return NULL;
    }
    PyObject *a_list = PyList_New(0);
    PyObject *append = a_list == NULL ? NULL : PyObject_GetAttrString(a_list, "append");
    Py_XDECREF(a_list);
    if (append == NULL) {
        return NULL;
    }
    list_append = PyCFunction_CheckExact(append) ? PyCFunction_GET_FUNCTION(append) : NULL;
    Py_DECREF(append);
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(created, "kept_chunks", (PyObject *)&KeptChunksType) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
