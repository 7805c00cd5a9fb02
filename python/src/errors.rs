//! memrl's errors as Python exceptions: one place maps every `memrl::Error` to a class of the
//! hierarchy defined in `memrl/_errors.py` (by its `ErrorKind`; a locked bank gets its own class).

use pyo3::prelude::*;
use pyo3::types::PyType;

use memrl::{Error, ErrorKind};

/// The exception class `name` of `memrl._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    Ok(py
        .import("memrl._errors")?
        .getattr(name)?
        .cast_into::<PyType>()?)
}

/// The Python exception for a library error.
pub(crate) fn to_py(error: Error) -> PyErr {
    Python::attach(|py| {
        let name = match (&error, error.kind()) {
            (Error::Locked { .. }, _) => "BankLockedError",
            (_, ErrorKind::InvalidInput) => "InvalidInputError",
            (_, ErrorKind::NotFound) => "NotFoundError",
            (_, ErrorKind::Conflict) => "ConflictError",
            (_, ErrorKind::Overloaded) => "OverloadedError",
            (_, ErrorKind::Corrupt) => "CorruptError",
            (_, ErrorKind::Io) => "IoError",
            _ => "InternalError",
        };
        let message = error.to_string();
        let class = match class(py, name) {
            Ok(class) => class,
            Err(e) => return e,
        };
        match os_errno(&error) {
            Some(errno) => PyErr::from_type(class, (errno, message)),
            None => PyErr::from_type(class, (message,)),
        }
    })
}

/// The operating system's error number behind an I/O error, if it gave one.
fn os_errno(error: &Error) -> Option<i32> {
    match error {
        Error::Io { source, .. } => source.raw_os_error(),
        Error::Batch(inner) => os_errno(inner),
        _ => None,
    }
}

/// An `InvalidInputError` (also a `ValueError`) for a value the binding itself checks, worded as
/// the library words its own (`field: problem`).
pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> PyErr {
    to_py(Error::InvalidValue {
        field: field.into(),
        problem: problem.into(),
    })
}

/// An `InvalidInputError` for a configuration field out of range, as the library reports one.
pub(crate) fn invalid_config(
    field: &'static str,
    value: impl std::fmt::Display,
    reason: &'static str,
) -> PyErr {
    to_py(Error::InvalidConfig {
        field,
        value: value.to_string(),
        reason,
    })
}

/// Converts library results at the boundary: `.map_err(to_py)` in one word.
pub(crate) trait IntoPy<T> {
    /// The value, or the Python exception for the error.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for memrl::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
