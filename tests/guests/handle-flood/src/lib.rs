//! Creates host resources (pollables) without end and never drops them:
//! the host must cap the call's resource table.

struct HandleFlood;

impl bulkhead_sdk::Guest for HandleFlood {
    fn invoke(_input: String) -> Result<String, String> {
        let mut n: u64 = 0;
        loop {
            let pollable = wasip2::clocks::monotonic_clock::subscribe_duration(1_000_000_000);
            std::mem::forget(pollable);
            n += 1;
            if n % 1_000_000 == 0 {
                bulkhead_sdk::info(&format!("{n} handles"));
            }
        }
    }
}

bulkhead_sdk::export!(HandleFlood);
