//! Unbounded recursion: the host must trap it at the wasm stack limit and
//! stay up.

#[inline(never)]
#[allow(unconditional_recursion)]
fn dive(depth: u64, pad: [u64; 16]) -> u64 {
    let next = std::hint::black_box([depth; 16]);
    dive(depth + 1, next) + pad[0]
}

struct StackBomb;

impl bulkhead_sdk::Guest for StackBomb {
    fn invoke(_input: String) -> Result<String, String> {
        Ok(dive(0, [0; 16]).to_string())
    }
}

bulkhead_sdk::export!(StackBomb);
