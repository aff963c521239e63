//! The crate's layers, bottom to top, and a check that no source file refers
//! to a layer above its own: every `crate::…` path in `src/**/*.rs` (code,
//! not comments) is placed in the layer of its top-level module, and a path
//! into a higher layer fails the test with its `file:line`.
//!
//! Modules in one layer may use each other. `crate::Name` for a name that
//! `lib.rs` re-exports counts as the module it comes from. `super::` paths
//! are not read: in this crate they stay inside one top-level module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules of `src/` by layer, bottom first (`main` is the binary).
const LAYERS: &[&[&str]] = &[
    // Host tensors and the typed errors of every layer.
    &["error", "tensor"],
    // CPU SIMD kernels.
    &["linalg"],
    // Weight formats as data.
    &["quant"],
    // Op definitions and their CPU references.
    &["ops"],
    // The format-neutral IR.
    &["graph"],
    // Value slots and lifetimes shared by the backends.
    &["plan"],
    // CPU and GPU executors.
    &["backend"],
    // The model file and the importers.
    &["model"],
    // A compiled model on a device.
    &["session"],
    // Applications of a session or a decoder: sentence embeddings, evaluation, generation.
    &["embed", "eval", "generate"],
    // Model-to-model tools: quantization, pruning, the CPU backward pass.
    &["optimize", "train"],
    // The HTTP server.
    &["serve"],
    // The command line.
    &["cli", "main"],
];

/// References into a higher layer that are allowed, as (the referenced path
/// after `crate::`, why). Each must still occur somewhere, or the test asks
/// for it to be removed.
const ALLOWED: &[(&str, &str)] = &[(
    "ops::CaseRng",
    "the deterministic RNG of the op test cases, used by unit tests of lower-layer kernels",
)];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for `lib.rs`).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(stem) => Some(stem.to_string()),
        None => Some(first),
    }
}

/// The source with `//` comments blanked (line breaks kept, so offsets still
/// give line numbers).
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The path text starting at `s` (`a::b::C`, or a `{…}` group up to its
/// closing brace).
fn path_at(s: &str) -> &str {
    if s.starts_with('{') {
        let mut depth = 0;
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return &s[..=i];
                    }
                }
                _ => {}
            }
        }
        return s;
    }
    let mut end = 0;
    let b = s.as_bytes();
    while end < s.len() {
        if is_ident(b[end] as char) {
            end += 1;
        } else if s[end..].starts_with("::") && s[end + 2..].starts_with(|c: char| is_ident(c) || c == '{') {
            if s[end + 2..].starts_with('{') {
                return &s[..end + 2 + path_at(&s[end + 2..]).len()];
            }
            end += 2;
        } else {
            break;
        }
    }
    &s[..end]
}

/// Splits a `{a::B, c}` group at its top-level commas into (offset, item).
fn group_items(group: &str) -> Vec<(usize, &str)> {
    let inner = &group[1..group.len().saturating_sub(1)];
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push((1 + start, &inner[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push((1 + start, &inner[start..]));
    items
        .into_iter()
        .map(|(o, s)| (o + (s.len() - s.trim_start().len()), s.trim()))
        .filter(|(_, s)| !s.is_empty() && *s != "self")
        .collect()
}

/// Every `crate::` path in `code`: (byte offset, path after `crate::`).
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|c: char| is_ident(c)) {
            continue;
        }
        let start = at + "crate::".len();
        let path = path_at(&code[start..]);
        if path.starts_with('{') {
            for (off, item) in group_items(path) {
                out.push((start + off, item.to_string()));
            }
        } else if !path.is_empty() {
            out.push((start, path.to_string()));
        }
    }
    out
}

/// The modules `lib.rs` re-exports names from: `Tensor` → `tensor`.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in code_only(lib).lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let module = rest.split("::").next().unwrap_or("").to_string();
        let names = match (rest.find('{'), rest.rfind('}')) {
            (Some(a), Some(b)) => rest[a + 1..b].split(',').map(str::trim).collect(),
            _ => vec![rest.rsplit("::").next().unwrap_or("")],
        };
        for n in names.into_iter().filter(|n| !n.is_empty()) {
            let name = n.rsplit(" as ").next().unwrap_or(n);
            map.insert(name.to_string(), module.clone());
        }
    }
    map
}

fn line_of(code: &str, offset: usize) -> usize {
    code[..offset].matches('\n').count() + 1
}

#[test]
fn every_top_level_module_has_a_layer() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(src_dir()).expect("src/") {
        let path = entry.expect("entry").path();
        let rel = path.strip_prefix(src_dir()).expect("under src/");
        if let Some(m) = module_of(rel) {
            if layer_of(&m).is_none() {
                missing.push(m);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "give these src/ modules a layer in LAYERS: {missing:?}"
    );
}

#[test]
fn no_module_refers_to_a_higher_layer() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("src/lib.rs");
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let (mut upward, mut used_allowances) = (Vec::new(), vec![false; ALLOWED.len()]);
    for file in &files {
        let rel = file.strip_prefix(src_dir()).expect("under src/");
        let Some(from) = module_of(rel) else { continue };
        let Some(from_layer) = layer_of(&from) else { continue };
        let code = code_only(&std::fs::read_to_string(file).expect("source file"));
        for (offset, path) in crate_paths(&code) {
            let first = path.split("::").next().unwrap_or("");
            let target = match layer_of(first) {
                Some(_) => first.to_string(),
                None => reexports.get(first).cloned().unwrap_or_else(|| first.to_string()),
            };
            let at = format!("src/{}:{}", rel.display(), line_of(&code, offset));
            let Some(to_layer) = layer_of(&target) else {
                upward.push(format!("{at}: cannot place `crate::{path}` in a layer"));
                continue;
            };
            if to_layer <= from_layer {
                continue;
            }
            if let Some(i) = ALLOWED.iter().position(|(p, _)| path.starts_with(p)) {
                used_allowances[i] = true;
                continue;
            }
            upward.push(format!(
                "{at}: `{from}` refers to `crate::{path}`, a higher layer (`{target}`)"
            ));
        }
    }
    let stale: Vec<&str> = ALLOWED
        .iter()
        .zip(&used_allowances)
        .filter(|(_, used)| !**used)
        .map(|((p, _), _)| *p)
        .collect();
    assert!(
        upward.is_empty(),
        "references into a higher layer (see LAYERS in tests/layers.rs):\n{}",
        upward.join("\n")
    );
    assert!(
        stale.is_empty(),
        "no code uses these ALLOWED paths any more; remove them: {stale:?}"
    );
}

#[test]
fn the_path_reader_sees_groups_and_reexports() {
    let code = "use crate::{ops::{self, Op}, tensor::Tensor};\nlet x = crate::Error::Gpu;\nlet y = $crate::graph::Graph::new();";
    let paths: Vec<String> = crate_paths(code).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths,
        ["ops::{self, Op}", "tensor::Tensor", "Error::Gpu", "graph::Graph::new"]
    );
    let map = root_reexports("pub use error::{Error, Result};\n#[cfg(feature = \"text\")]\npub use embed::Embedder;");
    assert_eq!(map.get("Result").map(String::as_str), Some("error"));
    assert_eq!(map.get("Embedder").map(String::as_str), Some("embed"));
    assert_eq!(line_of(code, code.find("$crate").unwrap_or(0)), 3);
}
