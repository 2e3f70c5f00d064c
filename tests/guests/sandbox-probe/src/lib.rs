//! Probes what plain WASI gives a tool with no grants: environment, args,
//! files, sockets, secrets. Every answer must be "nothing".

use serde_json::json;
use std::io::Write;

struct SandboxProbe;

impl bulkhead_sdk::Guest for SandboxProbe {
    fn invoke(_input: String) -> Result<String, String> {
        println!("probe on stdout");
        let _ = std::io::stderr().write_all(b"probe on stderr\n");
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        let args: Vec<String> = std::env::args().collect();
        let files: Vec<_> = ["/", ".", "/etc/passwd", "/proc/self/environ", "../../etc/passwd"]
            .iter()
            .map(|p| json!({ "path": p, "readable": std::fs::read(p).is_ok() || std::fs::read_dir(p).is_ok() }))
            .collect();
        let cwd = std::env::current_dir().map(|p| p.display().to_string()).ok();
        let tcp = std::net::TcpStream::connect("127.0.0.1:7070").is_ok();
        let dns = std::net::ToSocketAddrs::to_socket_addrs("localhost:80").is_ok();
        let secret = bulkhead_sdk::secrets::get("GITHUB_TOKEN").is_ok();
        let history = bulkhead_sdk::session::history(10).is_ok();
        Ok(json!({
            "env": env, "args": args, "files": files, "cwd": cwd,
            "tcp_connected": tcp, "dns_resolved": dns,
            "secret_readable": secret, "history_readable": history,
            "session": bulkhead_sdk::session::id(),
            "principal": bulkhead_sdk::session::principal(),
        })
        .to_string())
    }
}

bulkhead_sdk::export!(SandboxProbe);
