//! Server limits on raw TCP: oversized heads and URIs, slow headers, idle keep-alive
//! connections, the connection cap, and start-up refusal of bad configuration.

use crate::helpers::*;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes, returning what was read and how long it took.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("connection still open after {limit:?}"),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[tokio::test]
async fn oversized_uri_and_head_are_refused() {
    let app = spawn_app().await;
    let long = "a".repeat(9000);
    let r = app
        .get(&format!("/api/next-tracking-number/?customer_name={long}"))
        .await;
    assert_eq!(r.status(), 414);
    assert!(
        r.json::<serde_json::Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("too long")
    );
    let r = app
        .client
        .get(app.url("/healthz"))
        .header("x-big", "b".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    app.stop().await;
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout = Duration::from_millis(300);
        s.server.idle_timeout = Duration::from_millis(600);
    })
    .await;
    // Slowloris: half a request head, then nothing.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(2),
        "closed after the header timeout ({took:?})"
    );

    // A kept-alive connection: one request answered, then closed once idle.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (text, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "idle close after {took:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn connection_cap_holds_new_clients_until_one_leaves() {
    let app = spawn_app_with(|s| s.server.max_connections = 2).await;
    let a = TcpStream::connect(app.addr).await.unwrap();
    let _b = TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(app.addr).await.unwrap(); // queued by the kernel
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(400), c.read(&mut buf))
            .await
            .is_err(),
        "third connection must wait while two are open"
    );
    drop(a);
    let (text, _) = read_until_closed(&mut c, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    app.stop().await;
}

#[test]
fn bad_configuration_exits_64_naming_every_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
        .args(["serve"])
        .env("TRACKD_SERVER__LISTEN", "not-an-address")
        .env("TRACKD_TRACKING__BLOCK_MIN", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("tracking.block_min"),
        "{err}"
    );
}

#[test]
fn check_command_verifies_numbers() {
    let bin = env!("CARGO_BIN_EXE_trackd");
    let good = trackd::tracking::number::TrackingNumber::new(
        trackd::tracking::country::CountryCode::parse("MY").unwrap(),
        trackd::tracking::country::CountryCode::parse("ID").unwrap(),
        123_456,
    )
    .to_string();
    let out = Command::new(bin).args(["check", &good]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    let mut typo = good.clone();
    typo.replace_range(15..16, if good.ends_with('0') { "1" } else { "0" });
    let out = Command::new(bin).args(["check", &typo]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("check character"));
}
