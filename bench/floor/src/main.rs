//! The floor under a fan-out: what one loopback `write` system call costs the writer when
//! it is spread over thousands of sockets, and what batching several frames per write buys.
//!
//! Opens `SOCKETS` loopback connections, then, for each batch size, writes `ROUNDS` rounds
//! of `batch` 64-byte frames (one `write` of `batch × 64` bytes) to every socket in turn,
//! and reports the writing thread's CPU time (from /proc/thread-self/schedstat, ns) per
//! write and per frame. Nobody reads: every round fits in the sockets' buffers, and the
//! kernel's delivery into the receiving socket is charged to the writer, as it is to a
//! server. Run: `cargo run --release --manifest-path bench/floor/Cargo.toml`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};

const SOCKETS: usize = 9_000;
const ROUNDS: usize = 8;
const FRAME: usize = 64;

/// CPU time of this thread so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(SOCKETS);
    let mut readers = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        writers.push(server);
        readers.push(client); // kept open, never read
    }
    println!("| frames per write | CPU per write | CPU per frame | frames per CPU-second |");
    println!("|---:|---:|---:|---:|");
    for batch in [1usize, 8, 64] {
        // Fresh sockets' buffers matter: 8 rounds × 64 × 64 B = 32 KiB per socket at most.
        let payload = vec![b'x'; batch * FRAME];
        let start = thread_cpu_ns();
        for _ in 0..ROUNDS {
            for socket in &mut writers {
                socket.write_all(&payload)?;
            }
        }
        let writes = (ROUNDS * SOCKETS) as f64;
        let ns = (thread_cpu_ns() - start) as f64;
        println!(
            "| {batch} | {:.2} µs | {:.0} ns | {:.2}M |",
            ns / writes / 1e3,
            ns / writes / batch as f64,
            writes * batch as f64 / ns * 1e3
        );
        // Let the receivers' buffers empty before the next size: drain them.
        for reader in &mut readers {
            reader.set_nonblocking(true)?;
            let mut sink = [0u8; 65536];
            while let Ok(n) = std::io::Read::read(reader, &mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
    }
    Ok(())
}
