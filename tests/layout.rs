//! The architecture, checked: the crate's layers import only downwards, no module imports one
//! that imports it back, `unsafe` appears only in the OS layer, no function is longer than 100
//! lines, and the README's Layout picture lists the layers in their real order.
//!
//! Reads the sources as text: comments and string literals are blanked first, then every
//! `crate::` (or `rpcplugin::`, `super::`) path is resolved to the file that defines its module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A file may import from its own layer (without cycles) and from any
/// layer below; never from one above. Layers of equal rank (host and plugin) may not import each
/// other. `proto` is the generated code (`OUT_DIR`), which uses `rpc` and is used by `services`.
const LAYERS: &[(&str, u32)] = &[
    ("sys", 0),
    ("error", 1),
    ("wire", 2),
    ("runtime", 3),
    ("rpc", 4),
    ("proto", 5),
    ("services", 6),
    ("host", 7),
    ("plugin", 7),
];

/// The crate root and the fuzz entry points sit on top of everything.
const TOP: u32 = 8;

/// The longest function allowed, in lines from `fn` to its closing brace.
const MAX_FN_LINES: usize = 100;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The source with comments, string literals and character literals blanked (newlines kept, so
/// line numbers hold).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push('r');
            for &ch in &b[i + 1..j] {
                blank(&mut out, ch);
            }
            i = j;
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.push('\'');
                    for &ch in &b[i + 1..end] {
                        blank(&mut out, ch);
                    }
                    out.push('\'');
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The module path of a file under `src/` (`host::client` for `src/host/client.rs`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The paths a source names from the crate: `crate::a::b::{c, d::e}` gives `a::b::c` and
/// `a::b::d::e`; `super::x` is resolved against `module`.
fn crate_paths(code: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut found = Vec::new();
    // Inline modules (`mod tests { .. }`) open where they are declared: `super::` inside one
    // means the file's own module.
    let mut depth = 0i32;
    let mut inline: Vec<(String, i32)> = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let declared = line.trim_start();
        let declared = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .find_map(|p| declared.strip_prefix(p))
            .unwrap_or(declared);
        if let Some(rest) = declared.strip_prefix("mod ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if rest[name.len()..].trim_start().starts_with('{') {
                inline.push((name, depth));
            }
        }
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(name, _)| name.clone()))
            .collect();
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
        while inline.last().is_some_and(|(_, d)| depth <= *d) {
            inline.pop();
        }
        let module = &here[..];
        let mut rest = line;
        while let Some(at) = find_path_start(rest) {
            let (prefix_len, base) = if rest[at..].starts_with("crate::") {
                (7, Vec::new())
            } else if rest[at..].starts_with("rpcplugin::") {
                (11, Vec::new())
            } else {
                // super::, possibly repeated.
                let mut base = module.to_vec();
                let mut len = 0;
                while rest[at + len..].starts_with("super::") {
                    base.pop();
                    len += 7;
                }
                (len, base)
            };
            let tail = &rest[at + prefix_len..];
            let paths = expand(tail);
            if paths.is_empty() && !base.is_empty() {
                // `super::*`: the parent module itself.
                found.push((n + 1, base.clone()));
            }
            for path in paths {
                let mut full = base.clone();
                full.extend(path);
                found.push((n + 1, full));
            }
            rest = &rest[at + prefix_len..];
        }
    }
    found
}

fn find_path_start(s: &str) -> Option<usize> {
    ["crate::", "rpcplugin::", "super::"]
        .iter()
        .filter_map(|p| {
            let mut from = 0;
            while let Some(i) = s[from..].find(p) {
                let at = from + i;
                let before = s[..at].chars().last();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    return Some(at);
                }
                from = at + p.len();
            }
            None
        })
        .min()
}

/// `a::b::{c, d::{e, f}}` as the paths it names (only their module-like leading parts matter).
fn expand(s: &str) -> Vec<Vec<String>> {
    let mut head = Vec::new();
    let mut rest = s.trim_start();
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let inner = &group[..end];
            let mut out = Vec::new();
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.extend(expand(&inner[start..i]).into_iter().map(|p| {
                            let mut full = head.clone();
                            full.extend(p);
                            full
                        }));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            out.extend(expand(&inner[start..]).into_iter().map(|p| {
                let mut full = head.clone();
                full.extend(p);
                full
            }));
            return out;
        }
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        rest = &rest[ident.len()..];
        if ident == "self" {
            break;
        }
        head.push(ident);
        match rest.strip_prefix("::") {
            Some(r) => rest = r.trim_start(),
            None => break,
        }
    }
    if head.is_empty() {
        Vec::new()
    } else {
        vec![head]
    }
}

struct Crate {
    src: PathBuf,
    /// Module path -> file.
    files: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    fn read() -> Crate {
        let src = root().join("src");
        let files = rust_files(&src)
            .into_iter()
            .map(|f| (module_of(&src, &f), f))
            .collect();
        Crate { src, files }
    }

    /// The module (a file) a path lands in: its longest prefix that is a file's module.
    fn file_of(&self, path: &[String]) -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| self.files.contains_key(m))
    }

    fn rel(&self, module: &[String]) -> String {
        self.files[module]
            .strip_prefix(&self.src)
            .unwrap()
            .display()
            .to_string()
    }
}

fn rank(module: &[String]) -> u32 {
    match module.first() {
        None => TOP,
        Some(first) => LAYERS
            .iter()
            .find(|(name, _)| name == first)
            .map_or(TOP, |(_, r)| *r),
    }
}

fn layer_name(module: &[String]) -> &str {
    module.first().map_or("crate root", String::as_str)
}

/// An import of one file's module by another's: (from, to, the first line that names it).
type Edge = (Vec<String>, Vec<String>, usize);

/// File-level imports, one per distinct pair, and the paths that could not be resolved.
fn imports(krate: &Crate) -> (Vec<Edge>, Vec<String>) {
    let mut edges = BTreeMap::new();
    let mut problems = Vec::new();
    for (module, file) in &krate.files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (line, path) in crate_paths(&code, module) {
            if path.first().map(String::as_str) == Some("proto") {
                edges
                    .entry((module.clone(), vec!["proto".to_owned()]))
                    .or_insert(line);
                continue;
            }
            match krate.file_of(&path) {
                Some(to) if &to == module => {}
                Some(to) if to.is_empty() && !module.is_empty() => problems.push(format!(
                    "{}:{line}: `{}` goes through the crate root; name the module that \
                     defines it",
                    krate.rel(module),
                    path.join("::")
                )),
                Some(to) => {
                    edges.entry((module.clone(), to)).or_insert(line);
                }
                None => problems.push(format!(
                    "{}:{line}: cannot resolve `{}`",
                    krate.rel(module),
                    path.join("::")
                )),
            }
        }
    }
    let edges = edges.into_iter().map(|((a, b), l)| (a, b, l)).collect();
    (edges, problems)
}

#[test]
fn every_import_runs_down_the_layers() {
    let krate = Crate::read();
    let (edges, mut problems) = imports(&krate);
    for (from, to, line) in &edges {
        let (rf, rt) = (rank(from), rank(to));
        let other_layer = from.first() != to.first();
        if other_layer && rt >= rf && !(from.is_empty() || rf == TOP) {
            problems.push(format!(
                "{}:{line}: {} (layer {}) imports {} (layer {}), which is not below it",
                krate.rel(from),
                from.join("::"),
                layer_name(from),
                to.join("::"),
                layer_name(to),
            ));
        }
    }
    // Every top-level module of src/ is a known layer (or the root's own files).
    for module in krate.files.keys() {
        if module.len() == 1 && rank(module) == TOP && module[0] != "fuzzing" {
            problems.push(format!(
                "src/{}: a module outside the layers; add it to LAYERS and the README",
                module[0]
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_wire_layer_does_no_io() {
    let krate = Crate::read();
    let forbidden = [
        "std::fs",
        "std::env",
        "std::process",
        "std::thread",
        "TcpStream",
        "TcpListener",
        "UnixStream",
        "UnixListener",
        "Instant",
        "SystemTime",
    ];
    let mut problems = Vec::new();
    for (module, file) in &krate.files {
        if module.first().map(String::as_str) != Some("wire") {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (n, line) in code.lines().enumerate() {
            for word in forbidden.iter().filter(|w| line.contains(*w)) {
                problems.push(format!(
                    "{}:{}: {word} in the wire layer",
                    krate.rel(module),
                    n + 1
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let krate = Crate::read();
    let (edges, _) = imports(&krate);
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, to, _) in &edges {
        graph.entry(from.clone()).or_default().insert(to.clone());
    }
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let at = stack.iter().position(|m| m == next).unwrap();
                    let cycle: Vec<String> = stack[at..]
                        .iter()
                        .chain([next])
                        .map(|m| m.join("::"))
                        .collect();
                    cycles.push(cycle.join(" -> "));
                }
                Some(_) => {}
                None => visit(next, graph, state, stack, cycles),
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in graph.keys() {
        if !state.contains_key(node) {
            visit(node, &graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn unsafe_code_is_only_in_the_os_layer() {
    let krate = Crate::read();
    let mut problems = Vec::new();
    for (module, file) in &krate.files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let in_sys = module.first().map(String::as_str) == Some("sys");
        for (n, line) in code.lines().enumerate() {
            let words = line.split(|c: char| !(c.is_alphanumeric() || c == '_'));
            if !in_sys && words.clone().any(|w| w == "unsafe") {
                problems.push(format!(
                    "{}:{}: unsafe outside sys/",
                    krate.rel(module),
                    n + 1
                ));
            }
            if line.contains("allow(unsafe_code)") && krate.rel(module) != "sys/mod.rs" {
                problems.push(format!(
                    "{}:{}: allow(unsafe_code) outside sys/mod.rs",
                    krate.rel(module),
                    n + 1
                ));
            }
        }
    }
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("#![deny(unsafe_code)]"),
        "src/lib.rs must deny unsafe_code for the compiler to enforce this"
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Functions longer than [`MAX_FN_LINES`] in `dir`: (file, line, name, length).
fn long_functions(dir: &Path) -> Vec<(PathBuf, usize, String, usize)> {
    let mut long = Vec::new();
    for file in rust_files(dir) {
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let lines: Vec<&str> = code.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let Some(name) = fn_name(line) else { continue };
            if let Some(end) = body_end(&lines, start) {
                let len = end - start + 1;
                if len > MAX_FN_LINES {
                    long.push((file.clone(), start + 1, name, len));
                }
            }
        }
    }
    long
}

/// The name of the function item declared on this line, if one is.
fn fn_name(line: &str) -> Option<String> {
    let words: Vec<&str> = line
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let at = words.iter().position(|w| *w == "fn")?;
    let name = words.get(at + 1)?;
    // `fn(` is a function pointer type, not an item.
    let after_fn = line.split("fn").nth(1)?.trim_start();
    after_fn
        .starts_with(|c: char| c.is_alphabetic() || c == '_')
        .then(|| name.to_string())
}

/// The line of the brace that closes the body of the function declared at `start` (None for a
/// declaration without a body).
fn body_end(lines: &[&str], start: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut brackets = 0i32;
    let mut opened = false;
    let first = lines[start].find("fn").unwrap_or(0);
    for (n, line) in lines.iter().enumerate().skip(start) {
        let text = if n == start { &line[first..] } else { line };
        for c in text.chars() {
            match c {
                '(' | '[' => brackets += 1,
                ')' | ']' => brackets -= 1,
                ';' if !opened && brackets == 0 => return None,
                '{' => {
                    opened = true;
                    depth += 1;
                }
                '}' => {
                    depth -= 1;
                    if opened && depth == 0 {
                        return Some(n);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

#[test]
fn no_function_is_longer_than_100_lines() {
    let mut long = Vec::new();
    for dir in [
        "src",
        "os/src",
        "cli/src",
        "codegen/src",
        "cty/src",
        "terraform/src",
    ] {
        long.extend(long_functions(&root().join(dir)));
    }
    let report: Vec<String> = long
        .iter()
        .map(|(file, line, name, len)| {
            format!(
                "{}:{line}: fn {name} is {len} lines (at most {MAX_FN_LINES})",
                file.strip_prefix(root()).unwrap().display()
            )
        })
        .collect();
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

#[test]
fn the_checks_see_what_they_check() {
    // The scanner itself: comments and strings are not code, grouped imports expand, super
    // resolves, function lengths count from `fn` to the closing brace.
    let code =
        code_only("let s = \"crate::host\"; // crate::plugin\nuse crate::{wire::Address, rpc};");
    assert!(!code.contains("host") && !code.contains("plugin"));
    let module = vec!["host".to_owned(), "client".to_owned()];
    let paths: Vec<Vec<String>> = crate_paths(&code, &module)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        paths,
        [
            vec!["wire".to_owned(), "Address".to_owned()],
            vec!["rpc".to_owned()]
        ]
    );
    let sup = crate_paths("use super::process::PluginProcess;", &module);
    assert_eq!(sup[0].1, ["host", "process", "PluginProcess"]);
    let inline = crate_paths(
        "mod tests {\n    use super::negotiate;\n}\nuse super::x;",
        &module,
    );
    assert_eq!(inline[0].1, ["host", "client", "negotiate"]);
    assert_eq!(inline[1].1, ["host", "x"]);
    let body = "fn long() {\n".to_owned() + &"    x();\n".repeat(99) + "}\n";
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(body_end(&lines, 0), Some(100));
    assert_eq!(
        fn_name("pub(crate) fn spawn<'a>(x: &'a str) {"),
        Some("spawn".to_owned())
    );
    assert_eq!(fn_name("let f: fn(u8) -> u8 = g;"), None);
    assert_eq!(
        code_only("let c = '\"'; let l: &'a str;"),
        "let c = ' '; let l: &'a str;"
    );
}

#[test]
fn the_readme_layout_picture_lists_the_layers_in_order() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let layout = readme
        .split("\n## Layout")
        .nth(1)
        .expect("README has a Layout section");
    let picture = layout
        .split("```")
        .nth(1)
        .expect("the Layout section has a picture in a code block");
    // The picture lists the layers top to bottom: each name's first appearance as `name/`.
    let mut seen: Vec<(usize, &str)> = LAYERS
        .iter()
        .filter(|(name, _)| *name != "proto" && *name != "error")
        .map(|(name, _)| {
            let at = picture
                .find(&format!("{name}/"))
                .unwrap_or_else(|| panic!("the Layout picture does not show {name}/"));
            (at, *name)
        })
        .collect();
    seen.sort();
    let shown: Vec<&str> = seen.iter().map(|(_, n)| *n).collect();
    let mut expected: Vec<(u32, &str)> = LAYERS
        .iter()
        .filter(|(name, _)| *name != "proto" && *name != "error")
        .map(|(n, r)| (*r, *n))
        .collect();
    // Top first; host before plugin at the same rank.
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let expected: Vec<&str> = expected.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        shown, expected,
        "the README's Layout picture is out of date"
    );
}
