//! Bytes sent to `aurum serve` by anyone: one real server (the engine, the router, the API,
//! the token check) runs in this process on a loopback port over a fresh repository; each
//! input is written on a new connection, which is then read until the server closes it or
//! goes quiet. A panic in a worker aborts the process: a finding.
#![no_main]
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let dir = tempfile_dir();
        aurum::repo::init(&dir).expect("a repository");
        let serving = aurum::serve::bind(&dir, "127.0.0.1:0", Duration::from_secs(2)).expect("bind");
        let addr = serving.addr;
        std::thread::spawn(move || {
            static STOP: AtomicBool = AtomicBool::new(false);
            serving.run(&dir, 4, &STOP).expect("serve");
        });
        addr
    })
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("aurum-fuzz-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("repo")
}

fuzz_target!(|data: &[u8]| {
    let mut s = TcpStream::connect(server()).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
});
