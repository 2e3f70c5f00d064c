//! Allocates without end: the host must stop it at the memory limit.

struct MemoryBomb;

impl bulkhead_sdk::Guest for MemoryBomb {
    fn invoke(_input: String) -> Result<String, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            chunk[0] = 1;
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

bulkhead_sdk::export!(MemoryBomb);
