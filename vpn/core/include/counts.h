/* Drop counts handed to Python: None when nothing was dropped (the common case costs no
 * tuple), else one int per reason, in the order of the reason enum (wire.h). Include
 * <Python.h> first. */
#ifndef VPN_COUNTS_H
#define VPN_COUNTS_H

static inline PyObject *drop_counts(const Py_ssize_t counts[], int n)
{
    int any = 0;
    for (int i = 0; i < n; i++)
        any |= counts[i] != 0;
    if (!any)
        Py_RETURN_NONE;
    PyObject *tuple = PyTuple_New(n);
    for (int i = 0; tuple && i < n; i++) {
        PyObject *v = PyLong_FromSsize_t(counts[i]);
        if (!v)
            Py_CLEAR(tuple);
        else
            PyTuple_SET_ITEM(tuple, i, v);
    }
    return tuple;
}

#endif
