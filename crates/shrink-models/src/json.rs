//! Typed reading of config.json fields with errors that name the file and the field.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// Typed access to config.json fields, naming the file and field in errors.
pub(crate) struct Json<'a> {
    pub(crate) v: &'a Value,
    pub(crate) path: &'a Path,
}

impl Json<'_> {
    pub(crate) fn err(&self, what: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }
    pub(crate) fn field(&self, k: &str) -> Option<&Value> {
        self.v.get(k).filter(|x| !x.is_null())
    }
    pub(crate) fn str(&self, k: &str) -> Result<String> {
        self.opt_str(k)?
            .ok_or_else(|| self.err(format!("missing field \"{k}\"")))
    }
    pub(crate) fn opt_str(&self, k: &str) -> Result<Option<String>> {
        match self.field(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(o) => Err(self.err(format!("field \"{k}\" should be a string, found {o}"))),
        }
    }
    pub(crate) fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .ok_or_else(|| self.err(format!("missing field \"{k}\"")))
    }
    pub(crate) fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.field(k) {
            None => Ok(None),
            Some(x) => match x.as_u64() {
                Some(n) if n > 0 && n < (1 << 40) => Ok(Some(n as usize)),
                _ => Err(self.err(format!(
                    "field \"{k}\" should be a positive integer, found {x}"
                ))),
            },
        }
    }
    pub(crate) fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        match self.field(k) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("field \"{k}\" should be a number, found {x}"))),
        }
    }
    pub(crate) fn opt_bool(&self, k: &str) -> Result<Option<bool>> {
        match self.field(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(x) => Err(self.err(format!("field \"{k}\" should be true or false, found {x}"))),
        }
    }
}
