//! The financial-audit scenario (examples/financial-audit) runs end to end:
//! queries, reconciliation, approvals across a restart, the report, and a
//! verified audit chain.

#[test]
fn the_financial_audit_scenario_runs_end_to_end() -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_financial-audit")).env("RUST_LOG", "warn").output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "discrepancy \"T004\": \"amount_mismatch\"",
        "auditor denies T006",
        "- T005 adjustment -5500 cents: succeeded",
        "T004,9000,reconcile amount_mismatch",
        "audit trail intact",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    Ok(())
}
