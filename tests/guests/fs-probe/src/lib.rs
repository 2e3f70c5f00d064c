//! Runs the file operations it is given and reports each outcome, so host
//! tests can check both what a grant allows and every known escape:
//! `..` and absolute paths, symlinks out (with trailing-slash and `link/.`
//! forms), and writes, truncation, hard links and renames through read-only
//! mounts.
//!
//! Input: `{"ops": [{"op": "read" | "write" | "append" | "truncate" | "list" |
//! "mkdir" | "remove" | "symlink" | "hardlink" | "rename", "path": "...",
//! "to"?: "...", "data"?: "..."}]}`. Output: `{"results": [{"ok": bool,
//! "data"?: "...", "error"?: "..."}]}`.

use serde_json::{Value, json};
use std::fs;
use std::io::Write;

fn run(op: &Value) -> Result<Option<String>, String> {
    let path = op["path"].as_str().unwrap_or("");
    let to = op["to"].as_str().unwrap_or("");
    let data = op["data"].as_str().unwrap_or("");
    let e = |err: std::io::Error| err.to_string();
    match op["op"].as_str().unwrap_or("") {
        "read" => fs::read_to_string(path).map(Some).map_err(e),
        "write" => fs::write(path, data).map(|_| None).map_err(e),
        "append" => fs::OpenOptions::new().append(true).open(path).and_then(|mut f| f.write_all(data.as_bytes())).map(|_| None).map_err(e),
        "truncate" => fs::OpenOptions::new().write(true).truncate(true).open(path).map(|_| None).map_err(e),
        "list" => fs::read_dir(path)
            .map(|entries| {
                let mut names: Vec<String> = entries.filter_map(|d| d.ok()).map(|d| d.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                Some(names.join(","))
            })
            .map_err(e),
        "mkdir" => fs::create_dir_all(path).map(|_| None).map_err(e),
        "remove" => fs::remove_file(path).map(|_| None).map_err(e),
        "symlink" => symlink(to, path).map(|_| None),
        "hardlink" => fs::hard_link(path, to).map(|_| None).map_err(e),
        "rename" => fs::rename(path, to).map(|_| None).map_err(e),
        other => Err(format!("unknown op {other}")),
    }
}

/// `symlink_at` on the preopen holding `link` (std's is unstable on WASI).
fn symlink(target: &str, link: &str) -> Result<(), String> {
    for (dir, guest) in wasip2::filesystem::preopens::get_directories() {
        let prefix = format!("{}/", guest.trim_end_matches('/'));
        if let Some(rel) = link.strip_prefix(&prefix) {
            return dir.symlink_at(target, rel).map_err(|e| format!("{e:?}"));
        }
    }
    Err("no preopen holds the link".into())
}

struct FsProbe;

impl bulkhead_sdk::Guest for FsProbe {
    fn invoke(input: String) -> Result<String, String> {
        let input: Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
        let results: Vec<Value> = input["ops"]
            .as_array()
            .map(|ops| ops.iter().map(|op| match run(op) {
                Ok(data) => json!({ "ok": true, "data": data }),
                Err(error) => json!({ "ok": false, "error": error }),
            }).collect())
            .unwrap_or_default();
        Ok(json!({ "results": results }).to_string())
    }
}

bulkhead_sdk::export!(FsProbe);
