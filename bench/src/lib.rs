//! tmp
pub mod mock;
