//! A real PostgreSQL server for the tests, started by the harness itself
//! from Debian's binaries (package `postgresql`; `.ci/run` installs it).
//!
//! - [`PgServer::start`] makes a fresh cluster in a temporary folder
//!   (`initdb`, trust authentication, UTF8) and runs it on a free port of
//!   127.0.0.1 only. Its log is `log` in that folder.
//! - [`shared`] is one server per test binary (initdb costs about a second);
//!   each test takes its own database with [`PgServer::create_database`].
//! - [`PgServer::stop`] and [`PgServer::start_again`] restart a server of a
//!   test's own on the same folder and port (not the shared one: `&mut`).
//!
//! As root (CI and the developers' machines) PostgreSQL refuses to run, so
//! `initdb` and `pg_ctl` run as the `postgres` user (`runuser`) and the
//! folder is handed to that user (so the temp folder must be one that user
//! can enter, as /tmp is).
//!
//! Cleanup. Dropping a server stops it (`pg_ctl stop -m immediate`) and
//! removes its folder, which is kept when the thread panics, for its log.
//! A static is never dropped and a test process may be killed, so every
//! server also has a watchdog: a `sh` blocked reading a pipe whose only
//! writing end is held by the test process. However that process ends
//! (exit, panic, SIGKILL), the kernel closes the pipe, `read` returns and
//! the watchdog stops the postmaster and removes the folder. It runs in a
//! process group of its own, like the postmaster (`pg_ctl` detaches it), so
//! the Ctrl-C that stops `cargo test` does not stop it too. Drop kills the
//! watchdog first and cleans up itself. Limits: a watchdog killed on its own
//! (`kill -9` of it, or of every process) leaves the server running; the
//! shared server's folder goes at exit even when a test failed (the error
//! of a failed start carries the end of the log).

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct PgServer {
    dir: PathBuf,
    port: u16,
    /// The folder of `initdb`, `pg_ctl` and `postgres`.
    bin: PathBuf,
    /// Run PostgreSQL's programs as the `postgres` user (we are root).
    as_postgres: bool,
    watchdog: Option<Child>,
}

/// The server of this test binary, started by the first test that asks.
pub async fn shared() -> Result<&'static PgServer> {
    static SHARED: tokio::sync::OnceCell<PgServer> = tokio::sync::OnceCell::const_new();
    SHARED.get_or_try_init(PgServer::start).await
}

impl PgServer {
    /// A new cluster in a new folder, running. Blocks a thread of the
    /// blocking pool, not the test's runtime, for initdb.
    pub async fn start() -> Result<PgServer> {
        tokio::task::spawn_blocking(Self::start_blocking).await?
    }

    pub fn start_blocking() -> Result<PgServer> {
        let bin = find_bin_dir()?;
        let as_postgres = running_as_root();
        let dir = super::unique_dir("bulkhead-pg");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // From here on Drop cleans up, whatever fails next.
        let mut server = PgServer { dir, port: 0, bin, as_postgres, watchdog: None };
        server.watchdog = Some(server.spawn_watchdog()?);
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&server.dir), "chown postgres: (the data folder)")?;
        }
        server.initdb()?;
        // The port was free a moment ago; another listener may take it
        // before the postmaster binds it, so a few tries.
        let mut attempt = 1;
        loop {
            server.port = super::free_port();
            match server.start_again() {
                Err(e) if attempt < 3 && format!("{e:#}").contains("could not bind") => attempt += 1,
                result => return result.map(|()| server),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of the cluster (its log is `log` in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A URL for tokio-postgres (or deadpool-postgres) to database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (lowercase letters, digits and `_`, e.g. the
    /// test's name: unique in a test binary) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let plain = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if name.is_empty() || name.len() > 63 || !plain || name.as_bytes()[0].is_ascii_digit() {
            bail!("database name {name:?}: use 1 to 63 of a-z, 0-9 and _, not starting with a digit");
        }
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// A client of database `db`; its connection runs on the current runtime.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        connect(&self.url(db)).await
    }

    /// Fast shutdown (clients are disconnected, a checkpoint is written).
    /// Blocks until the server is down: in a test with a load running, use
    /// a multi-thread runtime so the load goes on meanwhile.
    pub fn stop(&mut self) -> Result<()> {
        run(&mut self.pg_ctl(["-m", "fast", "-w", "stop"]), "pg_ctl stop")
    }

    /// Starts the server again on the same folder and port.
    pub fn start_again(&mut self) -> Result<()> {
        let log = self.dir.join("log");
        let port = format!("-p {}", self.port);
        let mut start = self.pg_ctl(["-w", "-t", "60", "-o", &port, "-l"]);
        start.arg(&log).arg("start");
        run(&mut start, "pg_ctl start").with_context(|| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("PostgreSQL did not start on port {}; end of {}:\n{}", self.port, log.display(), tail.join("\n"))
        })
    }

    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    fn initdb(&self) -> Result<()> {
        let mut initdb = self.program("initdb");
        initdb.args(["-D"]).arg(&self.dir);
        // trust: tests only, and the server listens on loopback only. C
        // locale: the machine's may not exist, and sorting is the same everywhere.
        initdb.args(["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]);
        run(&mut initdb, "initdb")?;
        // In the config, not on pg_ctl's -o line, which a shell splits: the
        // folder's path is quoted here once.
        let quoted = self.dir.display().to_string().replace('\'', "''");
        let settings = format!(
            "\n# The bulkhead tests' server.\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{quoted}'\n\
             # Off for speed: the tests kill processes, never the machine, and\n\
             # the OS keeps what was written without fsync.\nfsync = off\n\
             # Hosts under test open up to 2 x pool_size connections each.\n\
             max_connections = 400\n"
        );
        let conf = self.dir.join("postgresql.conf");
        let mut file =
            std::fs::OpenOptions::new().append(true).open(&conf).with_context(|| conf.display().to_string())?;
        std::io::Write::write_all(&mut file, settings.as_bytes()).with_context(|| conf.display().to_string())
    }

    /// `sh` that waits for the test process's end (EOF on its stdin), then
    /// stops the server and removes the folder.
    fn spawn_watchdog(&self) -> Result<Child> {
        let script = r#"dir=$1; shift; read -r _; "$@" -D "$dir" -m immediate stop; rm -rf "$dir""#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script, "watchdog"]).arg(&self.dir);
        if self.as_postgres {
            cmd.args(["runuser", "-u", "postgres", "--"]);
        }
        cmd.arg(self.bin.join("pg_ctl"));
        cmd.current_dir("/").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        cmd.spawn().context("cannot start the PostgreSQL watchdog (sh)")
    }

    fn pg_ctl<const N: usize>(&self, args: [&str; N]) -> Command {
        let mut cmd = self.program("pg_ctl");
        cmd.arg("-D").arg(&self.dir).args(args);
        cmd
    }

    /// One of PostgreSQL's programs, as the `postgres` user when we are root.
    fn program(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        };
        // The postgres user may not be allowed into the test's folder.
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // Fails harmlessly when the server is not running.
        let _ = self.pg_ctl(["-m", "immediate", "-w", "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        if std::thread::panicking() {
            eprintln!("PostgreSQL folder kept for debugging: {} (its log is `log`)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A tokio-postgres client (no TLS: loopback); its connection runs on the
/// current runtime until the client is dropped.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The folder with `initdb` and `pg_ctl`: on PATH, else Debian's
/// `/usr/lib/postgresql/<version>/bin` of the highest version (not on PATH
/// after a plain `apt-get install postgresql`).
fn find_bin_dir() -> Result<PathBuf> {
    let on_path: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let mut debian: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    debian.sort();
    for dir in on_path.into_iter().chain(debian.into_iter().rev().map(|(_, dir)| dir)) {
        // Through symlinks (/usr/local/bin/initdb → /usr/lib/postgresql/15/
        // bin/initdb) to the real folder, where `postgres` is too.
        let Ok(initdb) = std::fs::canonicalize(dir.join("initdb")) else { continue };
        let Some(real) = initdb.parent() else { continue };
        if real.join("pg_ctl").is_file() && real.join("postgres").is_file() {
            return Ok(real.to_path_buf());
        }
    }
    bail!(
        "PostgreSQL is not installed: no initdb and pg_ctl on PATH nor in /usr/lib/postgresql/*/bin. \
         Install Debian's `postgresql` package (apt-get install --no-install-recommends postgresql; .ci/run does)"
    )
}

/// Whether the effective uid is 0, from /proc (no libc in this crate).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:	real	effective	saved	fs"
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)) == Some("0")
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
