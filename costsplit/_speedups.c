/* Compiled fast paths of costsplit (optional: without a C compiler the package installs
 * without them and runs the same code in Python; tests/test_speedups.py holds both to the same
 * results).
 *
 * filter_chunk(exchange, data) returns what costsplit.record.Exchange.filter(data) returns. It
 * settles the usual chunk of a compatible-mode stream whose include_usage costsplit injected --
 * one whole event, one line ending in a blank line, nothing carried over from the chunk before
 * -- by cutting the line's first "usage":null member with its comma, as Exchange.filter does
 * in Python. Every other chunk goes to exchange.filter, so both give the same bytes and leave
 * the exchange in the same state.
 *
 * new_event_id() is costsplit.events.new_event_id: a UUIDv7 string (RFC 9562 section 5.7), 48
 * bits of Unix milliseconds then 74 random bits from a per-process xoshiro256** generator that
 * Python seeds from os.urandom with seed_event_ids(32 bytes), at import and in a forked child.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* memmem */
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static const char USAGE_NULL[] = "\"usage\":null"; /* record.USAGE_NULL */
#define USAGE_NULL_LEN (sizeof(USAGE_NULL) - 1)

static PyObject *carry_name, *skip_blank_name, *filter_name;

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

static PyObject *
filter_chunk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "filter_chunk(exchange, data) takes two arguments");
        return NULL;
    }
    PyObject *exchange = args[0], *data = args[1];
    if (PyBytes_CheckExact(data) && exchange_is_clean(exchange)) {
        const char *bytes = PyBytes_AS_STRING(data);
        Py_ssize_t size = PyBytes_GET_SIZE(data);
        const char *newline = size >= 2 ? memchr(bytes, '\n', size) : NULL;
        if (newline != NULL && newline == bytes + size - 2) {
            const char *member = memmem(bytes, size, USAGE_NULL, USAGE_NULL_LEN);
            const char *after = member == NULL ? NULL : member + USAGE_NULL_LEN;
            if (after != NULL && after < bytes + size && *after == ',') {
                Py_ssize_t start = member - bytes, cut = USAGE_NULL_LEN + 1;
                PyObject *out = PyBytes_FromStringAndSize(NULL, size - cut);
                if (out != NULL) {
                    char *to = PyBytes_AS_STRING(out);
                    memcpy(to, bytes, start);
                    memcpy(to + start, bytes + start + cut, size - start - cut);
                    return out;
                }
                PyErr_Clear(); /* out of memory: the Python path decides what to do */
            }
        }
    }
    return PyObject_CallMethodOneArg(exchange, filter_name, data);
}

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

static PyMethodDef methods[] = {
    {"filter_chunk", (PyCFunction)(void (*)(void))filter_chunk, METH_FASTCALL,
     "filter_chunk(exchange, data): exchange.filter(data), the usual chunk settled in C."},
    {"new_event_id", new_event_id, METH_NOARGS,
     "new_event_id(): a UUIDv7 string, as costsplit.events.new_event_id."},
    {"seed_event_ids", seed_event_ids, METH_O,
     "seed_event_ids(seed): seed the id generator with 32 bytes from os.urandom."},
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
    if (carry_name == NULL || skip_blank_name == NULL || filter_name == NULL) {
        return NULL;
    }
    return PyModule_Create(&module);
}
