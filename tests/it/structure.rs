//! The library's imports run one way: no module of `src/` uses one that uses it back, directly
//! or through others, neither between top-level modules nor between the files of one module.
//! Read from the source text (`crate::`, `super::`, `self::` and child-module paths), so a new
//! circle fails CI where it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path (`["dispatch", "submit"]`) for each library file under `src/`.
fn library_files(src: &Path) -> Vec<(Vec<String>, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("main.rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            out.push((module, path));
        }
    }
    out
}

/// The code of a file that uses other modules: without its unit tests (`#[cfg(test)] mod
/// tests { ... }` comes last) and without `pub use` re-exports, through which a module shows its
/// children's items without using them itself.
fn used_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let reexport = regex::Regex::new(r"(?s)pub use [^;]*;").expect("regex");
    reexport.replace_all(code, "").into_owned()
}

/// `a::{b, c::d}` spelled out as `a::b, a::c::d`, innermost groups first.
fn expand_groups(text: &str) -> String {
    let group = regex::Regex::new(r"(\w+(?:::\w+)*)::\{([^{}]*)\}").expect("regex");
    let mut text = text.to_owned();
    loop {
        let next = group
            .replace_all(&text, |caps: &regex::Captures| {
                caps[2]
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| match item {
                        "self" => caps[1].to_owned(),
                        _ => format!("{}::{item}", &caps[1]),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .into_owned();
        if next == text {
            return text;
        }
        text = next;
    }
}

/// Every module a file's code refers to, resolved to the longest module that exists.
fn references(
    module: &[String],
    text: &str,
    modules: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let path_re =
        regex::Regex::new(r"\b(crate|super|self|[a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
            .expect("regex");
    // `super` of a `foo/mod.rs` or `foo.rs` file is the parent of `foo`.
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    let mut found = BTreeSet::new();
    for caps in path_re.captures_iter(&expand_groups(text)) {
        let mut base = match &caps[1] {
            "crate" => Vec::new(),
            "super" => parent.clone(),
            "self" => module.to_vec(),
            child => {
                // A child module used by name (`lanes::LaneKey` in `dispatch/mod.rs`);
                // anything else (`std::`, `tokio::`) is not ours.
                let mut m = module.to_vec();
                m.push(child.to_owned());
                if !modules.contains(&m) {
                    continue;
                }
                m
            }
        };
        let mut rest: Vec<&str> = caps[2].trim_start_matches("::").split("::").collect();
        while rest.first() == Some(&"super") {
            base.pop();
            rest.remove(0);
        }
        let mut candidate = base;
        candidate.extend(rest.iter().map(|s| (*s).to_owned()));
        while !candidate.is_empty() && !modules.contains(&candidate) {
            candidate.pop();
        }
        if !candidate.is_empty() {
            found.insert(candidate);
        }
    }
    found.remove(module);
    found
}

/// The strongly connected components of more than one node (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        found: Vec<Vec<String>>,
    }
    impl Walk<'_> {
        fn visit(&mut self, v: &str) {
            let i = self.index.len();
            self.index.insert(v.to_owned(), i);
            self.low.insert(v.to_owned(), i);
            self.stack.push(v.to_owned());
            self.on_stack.insert(v.to_owned());
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v.to_owned(), low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v.to_owned(), low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().expect("on stack");
                    self.on_stack.remove(&w);
                    let done = w == v;
                    component.push(w);
                    if done {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

/// The import graph at `depth` (1: top-level modules; 0: every file's own module).
fn graph(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = library_files(&src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let name = |m: &[String]| {
        let m = if depth == 0 {
            m
        } else {
            &m[..m.len().min(depth)]
        };
        m.join("::")
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &files {
        if module.is_empty() {
            continue; // lib.rs: declares the modules, uses none
        }
        let text = std::fs::read_to_string(path).expect("read source");
        for target in references(module, &used_code(&text), &modules) {
            let (from, to) = (name(module), name(&target));
            // Within one top-level module, only the file graph counts; `pb` is generated.
            if from != to && !to.is_empty() && to != "pb" {
                edges.entry(from).or_default().insert(to);
            }
        }
    }
    edges
}

#[test]
fn top_level_modules_import_one_way() {
    let edges = graph(1);
    assert!(edges.contains_key("app"), "the graph was read: {edges:?}");
    assert!(edges["app"].contains("dispatch"), "{edges:?}");
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import circles: {found:?}\nedges: {edges:#?}"
    );
}

#[test]
fn files_within_a_module_import_one_way() {
    let edges = graph(0);
    assert!(edges.contains_key("dispatch::submit"), "{edges:?}");
    let found = cycles(&edges);
    assert!(found.is_empty(), "import circles: {found:?}");
}

#[test]
fn a_circle_is_found() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"]]);
}
