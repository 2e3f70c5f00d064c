//! `file-search`: finds lines containing a text in the files of the
//! read-only `/docs` mount (case-insensitive).
//!
//! Input: `{"query": "...", "max_results"?: N}`. Output: `{"matches":
//! [{"path", "line", "text"}], "files_searched", "truncated"}`.

use bulkhead_sdk::Tool;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const ROOT: &str = "/docs";
/// Bounds on the walk, so a huge mount cannot make a call run away.
const MAX_DEPTH: usize = 8;
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_FILES: usize = 2000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    query: String,
    max_results: Option<usize>,
}

#[derive(Serialize)]
struct Match {
    path: String,
    line: usize,
    text: String,
}

#[derive(Serialize)]
struct Output {
    matches: Vec<Match>,
    files_searched: usize,
    truncated: bool,
}

fn files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if out.len() >= MAX_FILES {
            return;
        }
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && depth < MAX_DEPTH => files(&path, depth + 1, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

struct FileSearch;

impl Tool for FileSearch {
    type Input = Input;
    type Output = Output;

    fn run(input: Input) -> Result<Output, String> {
        let query = input.query.to_lowercase();
        if query.is_empty() {
            return Err("query must not be empty".into());
        }
        let max = input.max_results.unwrap_or(20).min(200);
        let mut paths = Vec::new();
        files(Path::new(ROOT), 0, &mut paths);
        let (mut matches, mut truncated) = (Vec::new(), false);
        'files: for path in &paths {
            if std::fs::metadata(path).map_or(true, |m| m.len() > MAX_FILE_BYTES) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(path) else { continue };
            for (i, line) in text.lines().enumerate() {
                if line.to_lowercase().contains(&query) {
                    if matches.len() == max {
                        truncated = true;
                        break 'files;
                    }
                    let text: String = line.trim().chars().take(200).collect();
                    matches.push(Match { path: path.display().to_string(), line: i + 1, text });
                }
            }
        }
        Ok(Output { matches, files_searched: paths.len(), truncated })
    }
}

bulkhead_sdk::export!(FileSearch);
