//! The layering docs/architecture.md describes, checked on the source: the
//! top-level modules of src/ import each other without a cycle, and the
//! transport (`upstream/`) knows nothing of the clients (`mux`), the
//! decision (`access`) or the prompts (`prompt`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// Top-level module name -> the other top-level modules its files name as
/// `crate::<module>`, test code included.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(SRC).expect("src/").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            modules.insert(name, rust_files(&path));
        } else if let Some(stem) = name.strip_suffix(".rs")
            && stem != "lib"
            && stem != "main"
        {
            modules.insert(stem.to_owned(), vec![path]);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(module, files)| {
            let mut used = BTreeSet::new();
            for file in files {
                let text = std::fs::read_to_string(file).expect("read a source file");
                for (at, _) in text.match_indices("crate::") {
                    let rest = &text[at + "crate::".len()..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    let target = &rest[..end];
                    if target != module && names.contains(target) {
                        used.insert(target.to_owned());
                    }
                }
            }
            (module.clone(), used)
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("a module directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// A cycle through `start`, as the path of modules, if there is one.
fn cycle_from(start: &str, graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(
        at: &str,
        start: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(next, start, graph, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    let mut seen = BTreeSet::new();
    walk(start, start, graph, &mut path, &mut seen).then_some(path)
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    // The scan itself works: these edges exist.
    assert!(graph["master"].contains("mux"), "{graph:#?}");
    assert!(graph["mux"].contains("state"), "{graph:#?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(module, &graph) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_transport_knows_no_clients_decisions_or_prompts() {
    let graph = imports();
    let upstream = &graph["upstream"];
    for forbidden in ["mux", "access", "prompt", "master", "state"] {
        assert!(
            !upstream.contains(forbidden),
            "src/upstream imports crate::{forbidden}: {upstream:?}"
        );
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &["a"][..]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_owned(), to.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(
        cycle_from("a", &graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(cycle_from("d", &graph), None);
}

/// The pure cores: codecs, parsers and matchers that are unit-tested and
/// fuzzed without a file system or a network.
const PURE_CORES: &[&str] = &[
    "mux/wire.rs",
    "mux/cmdline.rs",
    "mux/escape.rs",
    "mux/proxy/packet.rs",
    "access/policy.rs",
    "audit/chain.rs",
    "upstream/known_hosts/mod.rs",
    "upstream/lanes.rs",
    "upstream/pacing.rs",
    "endpoint.rs",
    "glob.rs",
    "codec.rs",
];

#[test]
fn the_pure_cores_do_no_io() {
    let io = [
        "std::fs",
        "std::net",
        "std::process",
        "std::env",
        "tokio::",
        "File::",
        "/dev/",
        "rustix::",
    ];
    for core in PURE_CORES {
        let text = std::fs::read_to_string(Path::new(SRC).join(core)).expect("a pure core");
        // Their unit tests may use the file system.
        let code = match text.find("mod tests {") {
            Some(at) => &text[..text[..at].rfind("#[cfg(test)]").unwrap_or(at)],
            None => text.as_str(),
        };
        for (number, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if let Some(what) = io.iter().find(|what| line.contains(*what)) {
                panic!("src/{core}:{}: {what} in a pure core: {line}", number + 1);
            }
        }
    }
}
