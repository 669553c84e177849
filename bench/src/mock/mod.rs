//! tmp
pub mod tokens;
