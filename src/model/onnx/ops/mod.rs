//! The ONNX op builders, registered by family: each family file holds one
//! table of `(ONNX op type, builder)`. The tables are the list of op types
//! the importer supports ([`supported_ops`]); an op type in no table is
//! reported as unsupported.
//!
//! A builder reads the node ([`OnnxNode`]: inputs, outputs, attributes) and
//! the values known so far ([`Ctx`]), folds what is constant, and emits the
//! nodes it maps to. It returns [`Skip`] with a reason when the node cannot
//! be imported as given (an attribute value, a dtype, an input that must be
//! constant).

mod binary;
mod cast;
mod constant;
mod conv;
mod integer;
mod matmul;
mod movement;
mod nbits;
mod norm;
mod pool;
mod quantize;
mod reduce;
mod softmax;
mod unary;
mod view;

use super::context::{Ctx, OnnxNode, Skip};

/// Imports one node into the graph being built.
pub(super) type Build = fn(&mut Ctx<'_>, &OnnxNode<'_>) -> Result<(), Skip>;

/// One family's builders: `(ONNX op type, builder)`.
pub(super) type Family = &'static [(&'static str, Build)];

/// Every family's table.
static FAMILIES: &[Family] = &[
    constant::OPS,
    view::OPS,
    movement::OPS,
    cast::OPS,
    binary::OPS,
    unary::OPS,
    softmax::OPS,
    matmul::OPS,
    quantize::OPS,
    integer::OPS,
    reduce::OPS,
    conv::OPS,
    pool::OPS,
    norm::OPS,
];

/// The builder for an ONNX op type of the default domain.
pub(super) fn builder(op_type: &str) -> Option<Build> {
    FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .find(|(name, _)| *name == op_type)
        .map(|&(_, build)| build)
}

/// The builder for an op type of onnxruntime's `com.microsoft` domain.
pub(super) fn ms_builder(op_type: &str) -> Option<Build> {
    nbits::MS_OPS
        .iter()
        .find(|(name, _)| *name == op_type)
        .map(|&(_, build)| build)
}

/// The ONNX op types the importer maps (some only for constant inputs or
/// some attribute values; the import error says which when it cannot).
pub fn supported_ops() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().flat_map(|f| f.iter()).map(|&(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_type_is_registered_once() {
        let mut seen = std::collections::HashSet::new();
        for op in supported_ops() {
            assert!(seen.insert(op), "{op} is registered twice");
            assert!(builder(op).is_some());
        }
        assert!(builder("NoSuchOp").is_none());
    }
}
