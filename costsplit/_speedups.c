/* Compiled fast path of costsplit.record.Exchange.filter (optional: without a C compiler the
 * package installs without it and record.filter_chunk is Exchange.filter itself).
 *
 * filter_chunk(exchange, data) returns what exchange.filter(data) returns. It settles the usual
 * chunk of a compatible-mode stream whose include_usage costsplit injected -- one whole event,
 * one line ending in a blank line, nothing carried over from the chunk before -- by cutting
 * the line's first "usage":null member with its comma, as Exchange.filter does in Python.
 * Every other chunk goes to exchange.filter, so both give the same bytes and leave the
 * exchange in the same state; tests/test_speedups.py holds them to it.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* memmem */
#include <Python.h>
#include <string.h>

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

static PyMethodDef methods[] = {
    {"filter_chunk", (PyCFunction)(void (*)(void))filter_chunk, METH_FASTCALL,
     "filter_chunk(exchange, data): exchange.filter(data), the usual chunk settled in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "costsplit._speedups", "Compiled fast paths of costsplit.", -1,
    methods,
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
