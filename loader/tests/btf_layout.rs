//! The Rust mirrors in `loader::layout` against the C side, read from the
//! BTF that clang wrote into the compiled object: struct sizes and field
//! offsets, and for every map its name, type, key and value sizes and
//! capacity. If someone edits `ebpf/sluice_maps.h` without the Rust side (or
//! the other way round), this fails. No kernel needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    mem::{offset_of, size_of},
};

use loader::layout::{self, Addr, Learned, LpmKey, Settings, SynBucket, Verdict};
use object::{Object as _, ObjectSection as _};

// BTF kinds (<linux/btf.h>).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Type {
    name: String,
    kind: u32,
    kind_flag: bool,
    /// Size for INT/STRUCT/UNION/ENUM/DATASEC, referenced type otherwise.
    size_or_type: u32,
    /// STRUCT/UNION: (name, type, bit offset); DATASEC: ("", var type, byte offset).
    members: Vec<(String, u32, u32)>,
    /// ARRAY: (element type, element count).
    array: Option<(u32, u32)>,
}

/// Just enough of a BTF parser (Documentation/bpf/btf.rst) for this test.
struct Btf {
    types: Vec<Type>, // index = type id; id 0 is void
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
}

impl Btf {
    fn parse(data: &[u8]) -> Self {
        assert_eq!(
            u16::from_le_bytes([data[0], data[1]]),
            0xeb9f,
            "BTF magic (little-endian)"
        );
        let hdr_len = u32_at(data, 4) as usize;
        let (type_off, type_len) = (u32_at(data, 8) as usize, u32_at(data, 12) as usize);
        let (str_off, str_len) = (u32_at(data, 16) as usize, u32_at(data, 20) as usize);
        let types_data = &data[hdr_len + type_off..hdr_len + type_off + type_len];
        let strings = &data[hdr_len + str_off..hdr_len + str_off + str_len];
        let string = |off: u32| {
            let s = &strings[off as usize..];
            String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
        };

        let void = Type {
            name: String::new(),
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: vec![],
            array: None,
        };
        let mut types = vec![void];
        let mut at = 0;
        while at < types_data.len() {
            let info = u32_at(types_data, at + 4);
            let mut t = Type {
                name: string(u32_at(types_data, at)),
                kind: (info >> 24) & 0x1f,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(types_data, at + 8),
                members: vec![],
                array: None,
            };
            let vlen = (info & 0xffff) as usize;
            at += 12;
            match t.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => {
                    t.array = Some((u32_at(types_data, at), u32_at(types_data, at + 8)));
                    at += 12;
                }
                KIND_STRUCT | KIND_UNION | KIND_DATASEC => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let name = if t.kind == KIND_DATASEC {
                            String::new()
                        } else {
                            string(u32_at(types_data, m))
                        };
                        let (ty, offset) = if t.kind == KIND_DATASEC {
                            (u32_at(types_data, m), u32_at(types_data, m + 4))
                        } else {
                            (u32_at(types_data, m + 4), u32_at(types_data, m + 8))
                        };
                        t.members.push((name, ty, offset));
                    }
                    at += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += vlen * 8,
                KIND_ENUM64 => at += vlen * 12,
                _ => {}
            }
            types.push(t);
        }
        Self { types }
    }

    fn named(&self, kind: u32, name: &str) -> Option<&Type> {
        self.types.iter().find(|t| t.kind == kind && t.name == name)
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> &Type {
        loop {
            let t = &self.types[id as usize];
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return t,
            }
        }
    }

    fn size(&self, id: u32) -> u32 {
        let t = self.resolve(id);
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => t.size_or_type,
            KIND_PTR => 8,
            KIND_ARRAY => {
                let (elem, n) = t.array.unwrap();
                self.size(elem) * n
            }
            other => panic!("no size for BTF kind {other}"),
        }
    }

    /// Byte offset of each member of a struct, by name.
    fn fields(&self, t: &Type) -> Vec<(String, usize)> {
        t.members
            .iter()
            .map(|(name, _, offset)| {
                let bits = if t.kind_flag {
                    offset & 0xff_ffff
                } else {
                    *offset
                };
                assert_eq!(bits % 8, 0, "{}.{name} is a bitfield", t.name);
                (name.clone(), (bits / 8) as usize)
            })
            .collect()
    }
}

fn object_btf() -> Btf {
    let file = object::File::parse(loader::object::bytes()).expect("parse the compiled XDP object");
    let section = file
        .section_by_name(".BTF")
        .expect("the object has a .BTF section (built with -g)");
    Btf::parse(section.data().unwrap())
}

#[test]
fn structs_match_their_rust_mirrors() {
    let btf = object_btf();
    type Mirror = (&'static str, usize, Vec<(&'static str, usize)>);
    let mirrors: [Mirror; 6] = [
        (
            "sluice_addr",
            size_of::<Addr>(),
            vec![
                ("family", offset_of!(Addr, family)),
                ("_pad", offset_of!(Addr, pad)),
                ("bytes", offset_of!(Addr, bytes)),
            ],
        ),
        (
            "sluice_lpm_key",
            size_of::<LpmKey>(),
            vec![
                ("prefixlen", offset_of!(LpmKey, prefixlen)),
                ("addr", offset_of!(LpmKey, addr)),
            ],
        ),
        (
            "sluice_settings",
            size_of::<Settings>(),
            vec![
                ("syn_rate", offset_of!(Settings, syn_rate)),
                ("syn_burst", offset_of!(Settings, syn_burst)),
                ("deny_action", offset_of!(Settings, deny_action)),
                ("_pad", offset_of!(Settings, pad)),
            ],
        ),
        (
            "sluice_learned",
            size_of::<Learned>(),
            vec![
                ("tenant_id", offset_of!(Learned, tenant_id)),
                ("flags", offset_of!(Learned, flags)),
            ],
        ),
        (
            "sluice_verdict",
            size_of::<Verdict>(),
            vec![
                ("action", offset_of!(Verdict, action)),
                ("_pad", offset_of!(Verdict, pad)),
                ("expires_at_ns", offset_of!(Verdict, expires_at_ns)),
            ],
        ),
        (
            "sluice_syn_bucket",
            size_of::<SynBucket>(),
            vec![("tat_ns", offset_of!(SynBucket, tat_ns))],
        ),
    ];
    for (name, rust_size, rust_fields) in mirrors {
        let c = btf
            .named(KIND_STRUCT, name)
            .unwrap_or_else(|| panic!("struct {name} is not in the object's BTF"));
        assert_eq!(c.size_or_type as usize, rust_size, "sizeof(struct {name})");
        let c_fields = btf.fields(c);
        let rust_fields: Vec<(String, usize)> = rust_fields
            .into_iter()
            .map(|(n, o)| (n.to_owned(), o))
            .collect();
        assert_eq!(
            c_fields, rust_fields,
            "fields of struct {name} (name, byte offset)"
        );
    }
    // aya's LPM key type is what the loader really writes with.
    assert_eq!(
        size_of::<aya::maps::lpm_trie::Key<Addr>>(),
        size_of::<LpmKey>()
    );
}

#[test]
fn maps_match_names_and_specs() {
    let btf = object_btf();
    let maps = btf
        .named(KIND_DATASEC, ".maps")
        .expect(".maps section in BTF");
    let mut found = BTreeMap::new();
    for (_, var, _) in &maps.members {
        let var = &btf.types[*var as usize];
        assert_eq!(var.kind, KIND_VAR);
        let def = btf.resolve(var.size_or_type);
        let mut fields = BTreeMap::new();
        for (field, ty, _) in &def.members {
            // __uint(name, N) is a pointer to int[N]; __type(name, T) a pointer to T.
            let pointee = btf.resolve(ty.to_owned());
            assert_eq!(pointee.kind, KIND_PTR, "{}.{field}", var.name);
            let target = pointee.size_or_type;
            let value = match btf.resolve(target).array {
                Some((_, n)) if ["type", "max_entries", "map_flags"].contains(&field.as_str()) => n,
                _ => btf.size(target),
            };
            fields.insert(field.clone(), value);
        }
        found.insert(var.name.clone(), fields);
    }

    let names: BTreeSet<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        layout::MAP_NAMES.into_iter().collect(),
        "map names in the object vs layout::MAP_NAMES"
    );
    for spec in layout::MAP_SPECS {
        let f = &found[spec.name];
        assert_eq!(f["type"], spec.kind as u32, "{}: map type", spec.name);
        assert_eq!(f["key"], spec.key_size, "{}: key size", spec.name);
        assert_eq!(f["value"], spec.value_size, "{}: value size", spec.name);
        assert_eq!(
            f["max_entries"], spec.max_entries,
            "{}: max_entries",
            spec.name
        );
    }
}

#[test]
fn program_name_matches() {
    let btf = object_btf();
    assert!(
        btf.named(KIND_FUNC, layout::PROG_XDP).is_some(),
        "function {} in the object",
        layout::PROG_XDP
    );
}

#[test]
fn header_constants_are_generated() {
    // A few spot checks that build.rs read the header as written.
    assert_eq!(layout::PIN_DIR, "/sys/fs/bpf/sluice");
    assert_eq!(layout::MAP_NAMES.len(), layout::MAP_SPECS.len());
    assert!(
        layout::MAP_NAMES.iter().all(|n| n.len() <= 15),
        "kernel object names hold 15 characters"
    );
    assert_eq!((layout::ACTION_DROP, layout::ACTION_RST), (1, 2));
    assert_eq!(
        layout::LPM_FAMILY_BITS as usize,
        8 * offset_of!(Addr, bytes)
    );
}
