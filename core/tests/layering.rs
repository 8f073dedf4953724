//! The crate's layering, checked: every `crate::...` path in a module names a module of a
//! lower layer (or the module itself). Peers on one layer (server and client, discovery and
//! transport) do not know each other, and no import runs upward, so there is no cycle.
//!
//! The table below is the design; change it only with the design.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules of `core/src`, lowest layer first. A module may use modules of lower
/// layers only.
const LAYERS: &[(&str, u32)] = &[
    ("codec", 0),     // message encodings: pure
    ("wire", 1),      // frames, headers, trailers, HELLO: pure
    ("status", 2),    // Status and Error
    ("telemetry", 2), // metrics, the metrics endpoint, trace context
    ("discovery", 3), // region map, registries (in-process, etcd)
    ("transport", 3), // QUIC + TLS configuration, endpoints, 0-RTT
    ("call", 4),      // one call's stream I/O, messages, reset codes
    ("server", 5),    // the server
    ("client", 5),    // one channel to one server
    ("region", 6),    // routing over many servers
    ("proxy", 7),     // the gateway: a server whose handlers are region calls
    ("testing", 8),   // link emulators, the demo, test etcd
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comment lines (doc comments link freely, code may not).
fn code_of(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of every `crate::` path in `code`, with `crate::{a, b::c}`
/// groups expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `etcd_crate::`, not our crate
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push(first_segment(&item));
        } else {
            found.push(first_segment(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Names `lib.rs` re-exports at the crate root, mapped to the module they come from.
fn root_reexports() -> BTreeMap<String, String> {
    let lib = code_of(&std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs"));
    let mut map = BTreeMap::new();
    for stmt in lib.split(';') {
        // Attributes such as `#[cfg(feature = "dev")]` may precede a re-export.
        let mut stmt = stmt.trim();
        while let Some(rest) = stmt.strip_prefix("#[") {
            stmt = rest.split_once(']').map_or("", |(_, after)| after).trim();
        }
        let Some(body) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let module = first_segment(body);
        if let Some(open) = body.find('{') {
            for name in body[open + 1..].trim_end_matches('}').split(',') {
                let name = name.trim().rsplit("::").next().unwrap_or("").to_string();
                if !name.is_empty() {
                    map.insert(name, module.clone());
                }
            }
        } else if let Some(name) = body.rsplit("::").next() {
            map.insert(name.trim().to_string(), module);
        }
    }
    map
}

/// The top-level module a source file belongs to (`None` for `lib.rs` and binaries).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_dir()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Every (file, module, used module) that breaks the table.
fn violations() -> Vec<String> {
    let reexports = root_reexports();
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let Some(own) = layer(&module) else {
            bad.push(format!(
                "{}: module `{module}` is not in LAYERS",
                file.display()
            ));
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).expect("read source"));
        for used in crate_paths(&code) {
            let target = reexports.get(&used).cloned().unwrap_or(used.clone());
            if target == module {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(l) => bad.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{used}` of `{target}` (layer {l})",
                    file.display()
                )),
                None => bad.push(format!(
                    "{}: `crate::{used}` is neither a module in LAYERS nor a root re-export",
                    file.display()
                )),
            }
        }
    }
    bad
}

#[test]
fn no_import_runs_up_the_layers_or_across_peers() {
    let bad = violations();
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn every_top_level_module_is_in_the_table() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let modules: std::collections::BTreeSet<String> =
        files.iter().filter_map(|f| module_of(f)).collect();
    for m in &modules {
        assert!(layer(m).is_some(), "module `{m}` has no layer in LAYERS");
    }
    assert!(
        modules.len() >= 10,
        "found only {modules:?}: wrong source dir?"
    );
}

/// The checker itself: it sees grouped and nested paths and re-exports, so a test that
/// passes is not one that looks at nothing.
#[test]
fn the_checker_finds_paths_in_groups_and_through_root_reexports() {
    let code = "use crate::{wire::{Code, Hello}, status::Status};\nlet x = crate::server::Server::builder();\n// use crate::proxy::Proxy;\nuse etcd_crate::Thing;";
    assert_eq!(crate_paths(&code_of(code)), ["wire", "status", "server"]);
    let reexports = root_reexports();
    assert_eq!(reexports.get("Channel").map(String::as_str), Some("client"));
    assert_eq!(reexports.get("Server").map(String::as_str), Some("server"));
}
