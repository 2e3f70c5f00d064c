//! The harness's PostgreSQL server (`bulkhead_tests::postgres`): real
//! queries, a database of each test's own, a restart that keeps data, and no
//! server or folder left behind when the test process ends or is killed.

use anyhow::{Context, Result};
use bulkhead_tests::eventually;
use bulkhead_tests::postgres::{self, PgServer};
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn the_harness_postgres_server_answers_queries_and_gives_each_test_its_own_database() -> Result<()> {
    let pg = postgres::shared().await?;
    let mine = postgres::connect(&pg.create_database("harness_own_database_mine").await?).await?;
    let other = postgres::connect(&pg.create_database("harness_own_database_other").await?).await?;

    mine.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'héllo')")
        .await?;
    let row = mine.query_one("SELECT body FROM notes WHERE id = $1", &[&1i32]).await?;
    assert_eq!(row.get::<_, String>(0), "héllo", "UTF8 round trip");

    let err = other.query("SELECT * FROM notes", &[]).await.expect_err("the table is in the other database only");
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_harness_postgres_server_stopped_and_started_again_keeps_what_was_written() -> Result<()> {
    let mut pg = PgServer::start().await?;
    let url = pg.create_database("kept").await?;
    let client = postgres::connect(&url).await?;
    client.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('before the stop')").await?;

    pg.stop()?;
    assert!(postgres::connect(&url).await.is_err(), "nothing answers while stopped");
    pg.start_again()?;

    let client = postgres::connect(&url).await?;
    let row = client.query_one("SELECT v FROM t", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "before the stop");
    Ok(())
}

/// Run only by the next test, as a child process: starts the shared server
/// and one of its own, prints their folders, then ends normally (the static
/// is never dropped) or, with `BULKHEAD_PG_KILL_SELF`, by SIGKILL.
#[tokio::test]
#[ignore = "a child process of the_postgres_servers_of_a_test_process_stop_and_their_folders_go_when_it_ends"]
async fn postgres_child_process_that_leaves_its_servers_behind() -> Result<()> {
    let shared = postgres::shared().await?;
    let own = PgServer::start().await?;
    for pg in [shared, &own] {
        pg.connect("postgres").await?.query_one("SELECT 1", &[]).await?;
        println!("PGDIR={}", pg.dir().display());
    }
    if std::env::var_os("BULKHEAD_PG_KILL_SELF").is_some() {
        std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status()?;
        std::thread::sleep(std::time::Duration::from_secs(10));
    }
    Ok(())
}

#[tokio::test]
async fn the_postgres_servers_of_a_test_process_stop_and_their_folders_go_when_it_ends() -> Result<()> {
    for kill in [false, true] {
        let mut child = std::process::Command::new(std::env::current_exe()?);
        child.args(["--exact", "postgres::postgres_child_process_that_leaves_its_servers_behind"]);
        child.args(["--ignored", "--nocapture", "--test-threads=1"]);
        if kill {
            child.env("BULKHEAD_PG_KILL_SELF", "1");
        }
        let out = tokio::task::spawn_blocking(move || child.output()).await??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dirs: Vec<&str> = stdout.lines().filter_map(|l| Some(l.split_once("PGDIR=")?.1)).collect();
        assert_eq!(dirs.len(), 2, "kill: {kill}; {out:?}");
        assert_eq!(out.status.success(), !kill, "{out:?}");

        for dir in dirs {
            eventually(&format!("no process naming {dir} and no such folder (kill: {kill})"), || async move {
                Ok((!std::path::Path::new(dir).exists() && processes_naming(dir)?.is_empty()).then_some(()))
            })
            .await?;
        }
    }
    Ok(())
}

/// The pids whose command line contains `needle` (the postmaster has `-D DIR`).
fn processes_naming(needle: &str) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else { continue };
        // A process may end while we look: no cmdline then.
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    Ok(pids)
}
