//! Runs the file operations it is given and reports each outcome, so host
//! tests can check both what a grant allows and every known escape:
//! `..` and absolute paths, symlinks out (with trailing-slash and `link/.`
//! forms), and writes, truncation, hard links and renames through read-only
//! mounts.
//!
//! It also tries to outgrow a workspace quota: `fill` writes `n` bytes
//! through a stream, `pwrite` writes `data` at offset `n`, `set_len` sets a
//! file's size to `n`, `files` creates `n` empty files in the folder `path`,
//! `nest` writes `data` to a file under `n` nested folders with 250-byte
//! names, past `PATH_MAX`, each opened from the one above.
//!
//! Input: `{"ops": [{"op": "read" | "write" | "append" | "truncate" | "list" |
//! "mkdir" | "remove" | "symlink" | "hardlink" | "rename" | "fill" | "pwrite" |
//! "set_len" | "files" | "nest", "path": "...", "to"?: "...", "data"?: "...", "n"?: N}]}`.
//! Output: `{"results": [{"ok": bool, "data"?: "...", "error"?: "..."}]}`;
//! `fill` and `files` report how far they got.

use serde_json::{Value, json};
use std::fs;
use std::io::Write;

fn run(op: &Value) -> Result<Option<String>, String> {
    let path = op["path"].as_str().unwrap_or("");
    let to = op["to"].as_str().unwrap_or("");
    let data = op["data"].as_str().unwrap_or("");
    let n = op["n"].as_u64().unwrap_or(0);
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
        "fill" => fill(path, n),
        "pwrite" => pwrite(path, data.as_bytes(), n),
        "nest" => nest(path, data.as_bytes(), n),
        "set_len" => fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).and_then(|f| f.set_len(n)).map(|_| None).map_err(e),
        "files" => (0..n)
            .try_for_each(|i| fs::File::create(format!("{path}/f{i}")).map(|_| ()).map_err(|err| format!("{i} files, then {err}")))
            .map(|_| Some(n.to_string())),
        other => Err(format!("unknown op {other}")),
    }
}

/// Writes `n` bytes in 64 KiB chunks; on an error, says how many went in.
fn fill(path: &str, n: u64) -> Result<Option<String>, String> {
    let mut file = fs::File::create(path).map_err(|e| e.to_string())?;
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0u64;
    while written < n {
        let len = chunk.len().min((n - written) as usize);
        file.write_all(&chunk[..len]).map_err(|e| format!("{written} bytes, then {e}"))?;
        written += len as u64;
    }
    Ok(Some(written.to_string()))
}

/// The preopen holding `path`, and the path relative to it.
fn preopen(path: &str) -> Result<(wasip2::filesystem::types::Descriptor, String), String> {
    for (dir, guest) in wasip2::filesystem::preopens::get_directories() {
        let prefix = format!("{}/", guest.trim_end_matches('/'));
        if let Some(rel) = path.strip_prefix(&prefix) {
            return Ok((dir, rel.to_string()));
        }
    }
    Err("no preopen holds the path".into())
}

/// `symlink_at` on the preopen holding `link` (std's is unstable on WASI).
fn symlink(target: &str, link: &str) -> Result<(), String> {
    let (dir, rel) = preopen(link)?;
    dir.symlink_at(target, &rel).map_err(|e| format!("{e:?}"))
}

/// Makes `depth` nested folders from the preopen holding `path` (which
/// names the first), then writes `data` to a file in the deepest.
fn nest(path: &str, data: &[u8], depth: u64) -> Result<Option<String>, String> {
    use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
    let (mut dir, first) = preopen(path)?;
    let name = "d".repeat(250);
    for level in 0..depth {
        let at = if level == 0 { first.as_str() } else { name.as_str() };
        dir.create_directory_at(at).map_err(|e| format!("{e:?}"))?;
        dir = dir.open_at(PathFlags::empty(), at, OpenFlags::DIRECTORY, DescriptorFlags::READ | DescriptorFlags::MUTATE_DIRECTORY).map_err(|e| format!("{e:?}"))?;
    }
    let file = dir.open_at(PathFlags::empty(), "deep", OpenFlags::CREATE, DescriptorFlags::WRITE).map_err(|e| format!("{e:?}"))?;
    file.write(data, 0).map(|n| Some(n.to_string())).map_err(|e| format!("{e:?}"))
}

/// `descriptor.write` at an offset (std's `write_at` is unstable on WASI).
fn pwrite(path: &str, data: &[u8], offset: u64) -> Result<Option<String>, String> {
    use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
    let (dir, rel) = preopen(path)?;
    let file = dir.open_at(PathFlags::empty(), &rel, OpenFlags::CREATE, DescriptorFlags::WRITE).map_err(|e| format!("{e:?}"))?;
    file.write(data, offset).map(|n| Some(n.to_string())).map_err(|e| format!("{e:?}"))
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
