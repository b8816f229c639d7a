//! An agent calling a service on the other machine through a zbridge pair.
//!
//! ```sh
//! cargo run --release -p zbridge-client --example agent -- config/zbridge.example.toml pc2 hello
//! ```
//!
//! Reads the bridge config (its `[client]` section, if any), prints the
//! client's events as they happen, sends one request and prints the reply.

use std::time::Duration;
use zbridge_client::{Client, ClientConfig, ClientError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(config), Some(target), Some(payload)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: agent CONFIG.toml TARGET PAYLOAD");
        std::process::exit(2);
    };
    let settings = ClientConfig::from_file(&config)?;
    println!("bridges: {:?}", settings.endpoints);
    let client = Client::connect(settings)?;

    // Failovers, switch-backs and breaker changes, on their own thread.
    let events = client.events();
    std::thread::spawn(move || {
        for event in events {
            println!("event: {event:?}");
        }
    });

    match client.request(&target, payload.as_bytes()) {
        Ok(reply) => {
            for frame in &reply.frames {
                println!("reply: {}", String::from_utf8_lossy(frame));
            }
            println!("from {} after {:?}", reply.endpoint, reply.elapsed);
        }
        // The bridge answered: the request reached it and was refused, or
        // the target failed. Retrying elsewhere would not help.
        Err(ClientError::Bridge { code, message }) => eprintln!("bridge said {code}: {message}"),
        // Every bridge failing: back off; the breaker keeps this cheap.
        Err(ClientError::CircuitOpen { retry_after }) => {
            eprintln!("bridges failing; try again in {retry_after:?}");
            std::thread::sleep(retry_after.min(Duration::from_secs(1)));
        }
        Err(e) => eprintln!("{e}"),
    }
    Ok(())
}
