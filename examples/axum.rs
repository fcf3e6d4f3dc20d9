//! heapprobe's routes inside an axum application.
//!
//! ```text
//! cargo run --example axum --features server              # 127.0.0.1:3000
//! curl 127.0.0.1:3000/metrics
//! curl -X POST 127.0.0.1:3000/reset-peak
//! ```
use std::alloc::System;
use std::sync::Arc;

use axum::extract::Request;
use axum::routing::{any, get};
use axum::Router;
use heapprobe::export::Endpoints;
use heapprobe::Heapprobe;

#[global_allocator]
static GLOBAL: Heapprobe<System> = Heapprobe::new(System);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| String::from("127.0.0.1:3000"));
    let mut app = Router::new().route("/", get(|| async { "the application's own routes go here\n" }));

    // heapprobe's routes (all but its "/" index), each answered by `handle`.
    let heapprobe = Arc::new(Endpoints::new(&GLOBAL));
    for path in Endpoints::PATHS.into_iter().filter(|path| *path != "/") {
        let heapprobe = Arc::clone(&heapprobe);
        app = app.route(path, any(move |request: Request| async move { heapprobe.handle(&request).await }));
    }

    let listener = tokio::net::TcpListener::bind(address).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
