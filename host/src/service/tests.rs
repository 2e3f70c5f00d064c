//! The service in process, on the example `counter` tool (built by
//! `scripts/build-guests`, as every test run does first).

use super::calls::NewCall;
use super::sessions::CreateSession;
use super::{Service, ToolSource};
use crate::auth::Principal;
use crate::config::Config;
use crate::model::CallStatus;
use crate::store::audit;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn start(rt: &tokio::runtime::Runtime, name: &str) -> (Arc<Service>, PathBuf) {
    let dir = std::env::temp_dir().join(format!("bulkhead-service-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::embedded();
    config.data_dir = dir.clone();
    config.principals = Some(Vec::new());
    let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-tools/counter");
    let (service, report) = rt.block_on(Service::start_with(config, ToolSource::Bundle(bundle))).unwrap();
    assert!(report.refused.is_empty(), "build the guest tools first (scripts/build-guests): {:?}", report.refused);
    (service, dir)
}

fn counter(key: Option<&str>) -> NewCall {
    NewCall { tool: "counter".into(), input: json!({}), idempotency_key: key.map(str::to_string) }
}

/// A call whose tool finishes while its `running` record still waits in
/// the writer's queue is written once, finished (no update of its row),
/// with the same columns and audit events, in the same order, as a call
/// whose record was written first.
#[test]
fn a_call_finished_before_its_record_is_written_is_stored_the_same() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (service, dir) = start(&rt, "merge");
    let me = Principal::local("agent");
    let sid = rt.block_on(service.create_session(&me, CreateSession::default())).unwrap().id;
    // The writer's own connection notes every update of a call row.
    rt.block_on(service.db.write(|c| {
        Ok(c.execute_batch(
            "CREATE TEMP TABLE updated (id TEXT); \
             CREATE TEMP TRIGGER note_updates AFTER UPDATE ON main.calls BEGIN INSERT INTO updated VALUES (new.id); END;",
        )?)
    }))
    .unwrap();

    // An idempotency key makes a call wait for its record before it runs.
    let first = rt.block_on(service.call(&me, &sid, counter(Some("k1")), Default::default())).unwrap().call;
    // A busy writer: the next call's record queues behind this job while
    // its tool runs and finishes.
    let busy = service
        .db
        .submit(|_| {
            std::thread::sleep(Duration::from_millis(1000));
            Ok(())
        })
        .unwrap();
    let second = rt.block_on(service.call(&me, &sid, counter(None), Default::default())).unwrap().call;
    rt.block_on(busy).unwrap();

    for call in [&first, &second] {
        assert_eq!(call.status, CallStatus::Succeeded, "{call:?}");
        assert!(call.started_at.is_some() && call.finished_at.is_some());
    }
    let counts = [&first, &second].map(|c| c.output.as_ref().map(|o| o["value"].clone()));
    assert_eq!(counts, [Some(json!(1)), Some(json!(2))]);
    let updated: Vec<String> = rt
        .block_on(service.db.write(|c| {
            let mut stmt = c.prepare("SELECT id FROM updated")?;
            let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            Ok(ids)
        }))
        .unwrap();
    assert_eq!(
        updated,
        std::slice::from_ref(&first.id),
        "the first call's record was finished by an update, the second's never"
    );

    let listed = rt.block_on(service.list_calls(&me, &sid, None, None, None)).unwrap();
    for call in [&first, &second] {
        let stored = listed.iter().find(|c| c.id == call.id).expect("listed");
        assert_eq!((stored.status, &stored.output, &stored.usage), (call.status, &call.output, &call.usage));
        assert_eq!((&stored.started_at, &stored.finished_at), (&call.started_at, &call.finished_at));
    }
    let events = rt.block_on(service.list_audit(&me, &sid, None, None)).unwrap();
    let shape: Vec<(String, Option<String>)> = events.iter().map(|e| (e.kind.clone(), e.call.clone())).collect();
    let per_call = |id: &str| {
        ["call_requested", "state_committed", "call_finished"].map(|k| (k.to_string(), Some(id.to_string())))
    };
    let mut expected = vec![("session_created".to_string(), None)];
    expected.extend(per_call(&first.id));
    expected.extend(per_call(&second.id));
    assert_eq!(shape, expected);
    let requested: Vec<_> = events.iter().filter(|e| e.kind == "call_requested").map(|e| &e.data).collect();
    assert_eq!(requested[0]["status"], "running");
    assert_eq!(requested[1]["status"], "running");
    assert_eq!(requested[0]["input_sha256"], requested[1]["input_sha256"]);
    assert_eq!(rt.block_on(service.db.write(|c| audit::verify_all(c))).unwrap(), Ok(7));
    drop(service);
    let _ = std::fs::remove_dir_all(dir);
}
