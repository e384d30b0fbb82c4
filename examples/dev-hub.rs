//! A development control plane: queues job files and prints what a real
//! agent tells it, so you can watch the sync loop without Semaphore.
//!
//! ```text
//! cargo run --example dev-hub -- --port 8000 examples/hello.yaml
//! semaphore-agent start --endpoint 127.0.0.1:8000 --no-https \
//!     --token dev
//! ```
//!
//! It is the integration tests' fake hub (tests/support/hub.rs), run in
//! verbose mode (a sync is printed when it differs from the previous one).
//! Ctrl-C asks the agent to shut down, then exits.

#[path = "../tests/support/hub.rs"]
#[allow(dead_code)]
mod hub;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let mut port: u16 = 8000;
    let mut sync_every: u64 = 2000;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => fail("--port needs a number"),
            },
            "--sync-every" => match args.next().and_then(|p| p.parse().ok()) {
                Some(ms) => sync_every = ms,
                None => fail("--sync-every needs milliseconds"),
            },
            "-h" | "--help" => {
                println!("usage: dev-hub [--port N] [--sync-every MS] [JOB_FILE.yaml|.json ...]");
                return;
            }
            _ => files.push(arg),
        }
    }

    let hub = hub::Hub::start_on(port, true);
    hub.accept_registration_token("dev");
    hub.set_next_sync_after(sync_every);
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| fail(&format!("cannot read {file}: {e}")));
        let job: serde_json::Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| fail(&format!("{file} is not a job file: {e}")));
        let id = hub.queue_job(job);
        println!("[hub] queued {file} as job {id}");
    }
    println!("[hub] listening on {}", hub.endpoint());
    println!(
        "[hub] run: semaphore-agent start --endpoint {} --no-https --token dev",
        hub.endpoint()
    );
    println!("[hub] Ctrl-C shuts the agent down and exits");

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        fail(&format!("cannot handle Ctrl-C: {e}"));
    }
    while !interrupted.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if hub.register_body().is_some() {
        println!("[hub] asking the agent to shut down");
        hub.shutdown("requested");
        let before = hub.disconnects();
        let deadline = Instant::now() + Duration::from_secs(10);
        hub.wait_until(deadline - Instant::now(), |h| h.disconnects() > before);
    }
}

fn fail(message: &str) -> ! {
    eprintln!("dev-hub: {message}");
    std::process::exit(2);
}
