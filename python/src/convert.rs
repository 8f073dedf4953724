//! Python objects to and from Meridian [`Value`]s.
//!
//! `None`, `bool`, `int` (signed 64-bit), `float`, `str`, `bytes` (also `bytearray` and
//! `memoryview`, sent as their bytes), `list`/`tuple` and `dict` map to the matching
//! `Value`; anything else is a `TypeError`, and an `int` that
//! does not fit in 64 bits is an `OverflowError`, both raised before anything is sent.
//! Nothing here ever runs code chosen by the peer: decoding only builds plain values.

use meridian::codec::{DecodeLimits, DEFAULT_MAX_DEPTH};
use meridian::Value;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};

/// Converts a Python object into a [`Value`], refusing unsupported types.
pub(crate) fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_value_at(obj, 0)
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn to_value_at(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    // Checked in order of how common each type is in RPC arguments; `bool` before `int`
    // because Python's bool is a subclass of int.
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Str(s.to_cow()?.into_owned()));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.is_truthy()?));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        return match i.extract::<i64>() {
            Ok(v) => Ok(Value::Int(v)),
            Err(_) => Err(PyOverflowError::new_err(format!(
                "int {} does not fit in 64 bits: Meridian ints are signed 64-bit",
                i.repr().map(|r| r.to_string()).unwrap_or_default()
            ))),
        };
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if let Some(bytes) = bytes_like(obj)? {
        return Ok(Value::Bytes(bytes));
    }
    if depth >= DEFAULT_MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "value nests lists and dicts deeper than {DEFAULT_MAX_DEPTH} levels"
        )));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        let mut items = Vec::with_capacity(list.len());
        for item in list.iter() {
            items.push(to_value_at(&item, depth + 1)?);
        }
        return Ok(Value::List(items));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        let mut items = Vec::with_capacity(tuple.len());
        for item in tuple.iter() {
            items.push(to_value_at(&item, depth + 1)?);
        }
        return Ok(Value::List(items));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            pairs.push((to_value_at(&k, depth + 1)?, to_value_at(&v, depth + 1)?));
        }
        return Ok(Value::Map(pairs));
    }
    Err(PyTypeError::new_err(format!(
        "cannot send a value of type {}: Meridian sends None, bool, int, float, str, \
         bytes (or bytearray, memoryview), list, tuple and dict",
        type_name(obj)
    )))
}

/// The contents of a `bytearray` or `memoryview` (copied: the sender may change its buffer
/// afterwards), `None` for anything else. A memoryview gives its bytes in C order whatever
/// its format, as `memoryview.tobytes()` does.
pub(crate) fn bytes_like(obj: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Some(b.to_vec()));
    }
    if obj.is_instance_of::<PyMemoryView>() {
        // `bytes(view)`: the limited API has no buffer access before Python 3.11.
        let copy = obj.py().get_type::<PyBytes>().call1((obj,))?;
        return Ok(Some(copy.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    Ok(None)
}

/// Converts a [`Value`] into a Python object. Lists used as map keys become tuples (a
/// dict key must be hashable); a map used as a map key is a `TypeError`.
pub(crate) fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::List(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(pairs) => {
            let dict = PyDict::new(py);
            for (k, v) in pairs {
                dict.set_item(to_key(py, k)?, to_python(py, v)?)?;
            }
            dict.into_any()
        }
    })
}

fn to_key<'py>(py: Python<'py>, key: &Value) -> PyResult<Bound<'py, PyAny>> {
    match key {
        Value::List(items) => {
            let keys = items
                .iter()
                .map(|k| to_key(py, k))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyTuple::new(py, keys)?.into_any())
        }
        Value::Map(_) => Err(PyTypeError::new_err(
            "received a map whose key is itself a map, which cannot be a dict key",
        )),
        other => to_python(py, other),
    }
}

/// Decodes a message body of the Value codec.
pub(crate) fn decode(bytes: &[u8]) -> Result<Value, meridian::Status> {
    Value::decode(bytes, &DecodeLimits::default()).map_err(meridian::Status::from)
}

/// Converts `obj` to a Meridian value, encodes it, decodes it and converts it back: what
/// a peer would receive. For tests and for checking a value before sending it.
#[pyfunction]
pub(crate) fn roundtrip<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let value = to_value(obj)?;
    let back =
        decode(&value.to_bytes()).map_err(|s| PyValueError::new_err(s.message().to_string()))?;
    to_python(obj.py(), &back)
}
