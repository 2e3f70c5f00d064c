//! An infinite loop: the host must stop it at the timeout and stay healthy.

struct SpinForever;

impl bulkhead_sdk::Guest for SpinForever {
    fn invoke(_input: String) -> Result<String, String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

bulkhead_sdk::export!(SpinForever);
