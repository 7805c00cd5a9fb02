//! Values across the boundary: JSON (memory metadata) to and from Python objects, and Python
//! sequences or arrays to the rows the library reads.
//!
//! Arrays: a C-contiguous float32 array is read in place, without a copy (the GIL is released
//! while the library reads it, so do not write to it from another thread meanwhile, as with any
//! numpy extension). Anything else numpy can read as numbers (another dtype, a Fortran-ordered or
//! strided array, nested lists) is converted once, with `numpy.ascontiguousarray`.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::errors::{invalid, to_py};

/// Deepest nesting of metadata accepted (serde_json's own parser stops at 128).
const MAX_JSON_DEPTH: usize = 100;

/// A JSON value as the Python object `json.loads` would give.
pub(crate) fn json_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|item| json_to_py(py, item))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A Python object as JSON: dicts with str keys, lists and tuples, str, int, float (finite),
/// bool and None. Anything else is an `InvalidInputError` naming where it is (`field`).
pub(crate) fn py_to_json(obj: &Bound<'_, PyAny>, field: &str) -> PyResult<Value> {
    py_to_json_at(obj, field, 0)
}

fn py_to_json_at(obj: &Bound<'_, PyAny>, field: &str, depth: usize) -> PyResult<Value> {
    if depth > MAX_JSON_DEPTH {
        return Err(invalid(
            field,
            format!("nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(invalid(
            field,
            format!("the integer {obj} does not fit in 64 bits"),
        ));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return Number::from_f64(v).map(Value::Number).ok_or_else(|| {
            invalid(
                field,
                format!("{v} is not a finite number (JSON has no NaN or infinity)"),
            )
        });
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::new();
        for (key, item) in dict.iter() {
            let Ok(key) = key.cast::<PyString>() else {
                return Err(invalid(
                    field,
                    format!(
                        "the key {} is a {}, not a str (JSON keys are strings)",
                        key.repr()?,
                        type_name(&key)
                    ),
                ));
            };
            let key = key.to_str()?;
            let value = py_to_json_at(&item, &format!("{field}.{key}"), depth + 1)?;
            map.insert(key.to_owned(), value);
        }
        return Ok(Value::Object(map));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in obj.try_iter()?.enumerate() {
            items.push(py_to_json_at(&item?, &format!("{field}[{i}]"), depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    Err(invalid(
        field,
        format!(
            "a {} is not JSON (use dict, list, str, int, float, bool or None)",
            type_name(obj)
        ),
    ))
}

/// The name of an object's type, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".into())
}

/// Float rows read from `obj`: a `(n, dim)` array, or one vector of `dim` (then `one` is true
/// and the array holds one row).
pub(crate) struct Rows<'py> {
    pub(crate) array: PyReadonlyArray2<'py, f32>,
    pub(crate) one: bool,
}

impl Rows<'_> {
    /// The rows, one after the other.
    pub(crate) fn as_slice(&self) -> PyResult<&[f32]> {
        self.array
            .as_slice()
            .map_err(|e| PyTypeError::new_err(format!("array not contiguous: {e}")))
    }

    /// How many rows.
    pub(crate) fn len(&self) -> usize {
        self.array.shape()[0]
    }
}

/// Reads `obj` as float32 rows of dimension `dim` (see the module docs); `what` names the
/// input in errors ("query", "embeddings").
pub(crate) fn float_rows<'py>(
    obj: &Bound<'py, PyAny>,
    what: &'static str,
    dim: usize,
) -> PyResult<Rows<'py>> {
    if let Some(rows) = in_place(obj, what, dim)? {
        return Ok(rows);
    }
    if let Ok(kind) = obj
        .getattr("dtype")
        .and_then(|d| d.getattr("kind"))
        .and_then(|k| k.extract::<String>())
    {
        if kind == "c" {
            return Err(invalid(
                what,
                "complex numbers cannot be embeddings (converting would drop the imaginary part)",
            ));
        }
    }
    let py = obj.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", "float32")?;
    let converted = py
        .import("numpy")?
        .call_method("ascontiguousarray", (obj,), Some(&kwargs))
        .map_err(|e| {
            invalid(
                what,
                format!(
                    "a {} cannot be read as float32 numbers ({e})",
                    type_name(obj)
                ),
            )
        })?;
    match in_place(&converted, what, dim)? {
        Some(rows) => Ok(rows),
        None => {
            let shape: Vec<usize> = converted.getattr("shape")?.extract()?;
            Err(invalid(
                what,
                format!(
                    "expected one vector of dimension {dim} or an array of shape (n, {dim}), got shape {shape:?}"
                ),
            ))
        }
    }
}

/// `obj` read in place when it is a C-contiguous float32 array of one or two dimensions (with
/// its width checked), `None` when it is not such an array.
fn in_place<'py>(
    obj: &Bound<'py, PyAny>,
    what: &'static str,
    dim: usize,
) -> PyResult<Option<Rows<'py>>> {
    let check = |got: usize| {
        if got == dim {
            Ok(())
        } else {
            Err(to_py(memrl::Error::DimensionMismatch {
                what,
                expected: dim,
                got,
            }))
        }
    };
    if let Ok(array) = obj.cast::<PyArray2<f32>>() {
        if array.is_c_contiguous() {
            check(array.shape()[1])?;
            return Ok(Some(Rows {
                array: array.readonly(),
                one: false,
            }));
        }
    } else if let Ok(array) = obj.cast::<PyArray1<f32>>() {
        if array.is_c_contiguous() {
            check(array.len())?;
            // A view of the same data with one row: no copy.
            let row = array.reshape([1, array.len()])?;
            return Ok(Some(Rows {
                array: row.readonly(),
                one: true,
            }));
        }
    }
    Ok(None)
}

/// A flat vector of `rows x dim` floats as a numpy array of that shape, without copying it.
pub(crate) fn to_array<'py>(
    py: Python<'py>,
    flat: Vec<f32>,
    dim: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let rows = flat.len() / dim.max(1);
    Ok(PyArray1::from_vec(py, flat)
        .reshape([rows, dim])?
        .into_any())
}
