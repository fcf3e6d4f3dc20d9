//! The standalone server in a service that has no HTTP stack of its own.
//!
//! ```text
//! cargo run --example serve --features server             # 127.0.0.1:6060
//! cargo run --example serve --features server -- 127.0.0.1:0
//! curl 127.0.0.1:6060/metrics
//! ```
use std::alloc::System;
use std::collections::HashMap;
use std::time::Duration;

use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| String::from("127.0.0.1:6060"));
    // The one line: the server runs on its own thread from here on.
    let server = heapprobe::serve(&GLOBAL, address.as_str())?;
    println!("listening on {}", server.local_addr());
    println!("try: curl http://{}/metrics", server.local_addr());

    // The service: a cache that grows and is trimmed.
    let mut cache: HashMap<u64, String> = HashMap::new();
    for i in 0u64.. {
        cache.insert(i, format!("entry {i}"));
        if cache.len() > 10_000 {
            cache.retain(|k, _| k % 2 == 0 && *k > i - 5_000);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
