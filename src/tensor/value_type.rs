//! The static type of a graph value: dtype and a shape whose dimensions may be
//! symbolic (a batch dimension named `batch`, say).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::DType;

/// One dimension of a value's shape: a known size or a named symbol.
///
/// In JSON a known dimension is a number and a symbol is a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Known(usize),
    /// A size known only at run time, named (all dims with one name are equal).
    Sym(String),
}

impl Dim {
    /// The size, if fixed.
    pub fn known(&self) -> Option<usize> {
        match self {
            Dim::Known(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Known(n)
    }
}

/// The dtype and (possibly symbolic) shape of a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueType {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<Dim>,
}

impl ValueType {
    /// A type with every dimension known.
    pub fn known(dtype: DType, shape: &[usize]) -> Self {
        Self {
            dtype,
            shape: shape.iter().map(|&d| Dim::Known(d)).collect(),
        }
    }

    /// The shape, if every dimension is known.
    pub fn concrete_shape(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(Dim::known).collect()
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Formats the shape alone, e.g. `[batch, 64]`.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!("[{}]", dims.join(", "))
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape_string())
    }
}
