//! The compiled XDP program, embedded at build time.
//!
//! `build.rs` compiles `ebpf/sluice_xdp.c` with `clang -O2 -g -target bpf`;
//! the object (code, map definitions, BTF) is part of this crate's binary,
//! so the loader never looks for a file at run time.

/// The ELF object, 8-byte aligned as aya requires.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp.o"))
}
