//! Hostile WebSocket clients against one replica, the real binary, so that
//! its resident memory can be read from `/proc` while they work.
//!
//! At once: sockets that churn through thousands of subscribe and
//! unsubscribe operations, one that asks for more channels than a socket
//! may hold, sockets that never read while a thousand prices tick, sockets
//! that flood, frames whose header claims a gigabyte, binary frames. Then
//! more sockets than the replica admits. Meanwhile a well-behaved socket
//! must keep getting prices and the REST API must keep answering, and the
//! replica's RSS must stay under a bound proportional to its sockets and
//! fall back once they are gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::*;
use crate::helpers::*;

const PLAYERS: usize = 1_001;
const CHURNERS: usize = 300;
const OPS_PER_CHURNER: usize = 40;
const SLEEPERS: usize = 100;
const FLOODERS: usize = 100;
const GIANTS: usize = 100;
const BINARY: usize = 50;
/// `broadcast.max_connections` for this replica.
const ADMITS: usize = 800;
/// What one socket may cost in resident memory, on top of the idle replica
/// (its buffers, its slot in the hub, its share of the allocator's slack;
/// this is a debug build).
const BYTES_PER_SOCKET: u64 = 64 * 1024;
/// What a socket that stopped reading may hold on top until it is closed:
/// the 32 frames actix-ws queues per session, each a `prices` frame of 200
/// players (under 20 KiB).
const BYTES_PER_SLEEPER: u64 = 32 * 20 * 1024;
/// Left over once every hostile socket is gone and the replica has given
/// what they freed back to the kernel (1–5 MiB here; without the release,
/// glibc kept 29–60 MiB of it).
const RESIDUE_BYTES: u64 = 16 * 1024 * 1024;
/// How long the replica may take to give that memory back: it looks at its
/// socket count every second.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

/// The replica's resident memory; it must still be running.
fn rss_bytes(pid: u32) -> u64 {
    matchday::memory::rss_kib(&[pid]).expect("the replica's RSS from /proc") * 1024
}

/// Lets this test process hold a few thousand sockets.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn ws_url(app: &TestApp) -> String {
    format!("{}/ws", app.address.replace("http://", "ws://"))
}

/// Reads until the server closes; the close code, if one arrived.
async fn close_code(ws: &mut WsClient, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.read(left).await {
            WsRead::Json(_) => continue,
            WsRead::Closed(code) => return code,
            WsRead::Timeout => panic!("the server did not close the socket within {within:?}"),
        }
    }
}

/// Subscribes to fifty player channels and a few malformed ones and at
/// once unsubscribes again, `OPS_PER_CHURNER / 2` times, checking each
/// answer. Returns the operations acknowledged.
async fn churn(app: &TestApp, players: &[i64], n: usize) -> usize {
    let mut ws = app.ws(None).await;
    let mut acknowledged = 0;
    for op in 0..OPS_PER_CHURNER / 2 {
        let start = (n * 7 + op * 13) % (players.len() - 50);
        let mut channels: Vec<String> = players[start..start + 50]
            .iter()
            .map(|id| format!("player:{id}"))
            .collect();
        channels.extend(["player:0", "player:x", "nonsense"].map(String::from));
        ws.send(json!({"op": "subscribe", "channels": channels}))
            .await;
        ws.send(json!({"op": "unsubscribe", "channels": channels}))
            .await;
        let subscribed = ws.expect("subscribed", Duration::from_secs(30)).await;
        assert_eq!(subscribed["channels"].as_array().map(Vec::len), Some(50));
        let refused = ws.expect("error", Duration::from_secs(30)).await;
        assert_eq!(refused["code"], "invalid_channel", "{refused}");
        ws.expect("unsubscribed", Duration::from_secs(30)).await;
        acknowledged += 2;
    }
    // Still open and answering.
    ws.send(json!({"op": "ping"})).await;
    ws.expect("pong", Duration::from_secs(30)).await;
    acknowledged
}

/// A socket that asks for every player: the thousand-and-first is refused.
async fn hog(app: &TestApp, players: &[i64]) {
    let mut ws = app.ws(None).await;
    let channels: Vec<String> = players.iter().map(|id| format!("player:{id}")).collect();
    // Two messages: one frame holds at most 16 KiB.
    for half in channels[..1_000].chunks(500) {
        ws.send(json!({"op": "subscribe", "channels": half})).await;
        let subscribed = ws.expect("subscribed", Duration::from_secs(30)).await;
        assert_eq!(subscribed["channels"].as_array().map(Vec::len), Some(500));
    }
    ws.send(json!({"op": "subscribe", "channels": channels[1_000..]}))
        .await;
    let refused = ws.expect("error", Duration::from_secs(30)).await;
    assert_eq!(refused["code"], "too_many_channels", "{refused}");
    assert_eq!(refused["channels"], json!(channels[1_000..]));
}

/// A socket with a tiny receive buffer, subscribed to 200 ticking players,
/// that never reads: the server must give up on it (1013).
async fn sleeper(app: &TestApp, players: &[i64]) -> WsClient {
    let address = app.address.trim_start_matches("http://");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4 * 1024).expect("SO_RCVBUF");
    let tcp = socket
        .connect(address.parse().expect("address"))
        .await
        .expect("connect");
    let (stream, _) =
        tokio_tungstenite::client_async(ws_url(app), tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .expect("upgrade");
    let mut ws = WsClient { stream };
    let channels: Vec<String> = players[..200]
        .iter()
        .map(|id| format!("player:{id}"))
        .collect();
    ws.send(json!({"op": "subscribe", "channels": channels}))
        .await;
    ws
}

/// Sends 300 messages without a pause: closed with 1008.
async fn flooder(app: &TestApp) -> Option<u16> {
    let mut ws = app.ws(None).await;
    for _ in 0..300 {
        if ws
            .stream
            .send(Message::text("{\"op\":\"ping\"}"))
            .await
            .is_err()
        {
            break;
        }
    }
    close_code(&mut ws, Duration::from_secs(30)).await
}

/// Upgrades by hand and sends only the header of a masked text frame that
/// announces 1 GiB: the server must close with 1009 without waiting for (or
/// allocating) the payload.
async fn giant(app: &TestApp) -> Option<u16> {
    let address = app.address.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(address).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.expect("upgrade response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut frame = vec![0x81, 0xFF];
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    let _ = tcp.write_all(&frame).await;
    // The close frame: 0x88, a length, then the code.
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 256];
        while let Ok(read) = tcp.read(&mut chunk).await {
            if read == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..read]);
        }
    })
    .await;
    let close = reply.windows(2).position(|w| w[0] == 0x88 && w[1] >= 2)?;
    let code = reply.get(close + 2..close + 4)?;
    Some(u16::from_be_bytes([code[0], code[1]]))
}

/// A socket read (so the server's pings are answered) by a task of its own
/// until this is dropped, which closes it.
struct KeepReading(tokio::task::JoinHandle<()>);

impl Drop for KeepReading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends binary frames: each gets an error and the socket stays open.
async fn binary(app: &TestApp) -> KeepReading {
    let mut ws = app.ws(None).await;
    for _ in 0..10 {
        ws.send_raw(Message::binary(vec![0u8; 1_024])).await;
        let error = ws.expect("error", Duration::from_secs(30)).await;
        assert_eq!(error["code"], "bad_request", "{error}");
    }
    KeepReading(tokio::spawn(async move {
        while ws.stream.next().await.is_some() {}
    }))
}

/// Runs `count` copies of `client`, each as its own task.
fn spawn_each<F, Fut>(count: usize, client: F) -> Vec<tokio::task::JoinHandle<Fut::Output>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    (0..count).map(|n| tokio::spawn(client(n))).collect()
}

/// Every task's output, in order; a panicking client fails the test.
async fn joined<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.expect("a hostile client failed its own checks"));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_sockets_are_shed_while_memory_stays_bounded_and_others_are_served() {
    raise_open_files_limit();
    let admits = ADMITS.to_string();
    let cluster = Cluster::start(
        1,
        &[
            ("MATCHDAY__BROADCAST__MAX_CONNECTIONS", admits.as_str()),
            ("MATCHDAY__BROADCAST__STUCK_TIMEOUT_MS", "1000"),
            ("MATCHDAY__PRICING__TICK_VOLATILITY_BP", "1000"),
        ],
    )
    .await;
    let app = remote_app(
        cluster.app(0).address.clone(),
        cluster.app(0).database_url.clone(),
    );
    let pid = cluster.pid(0).expect("replica running");
    let players: Vec<i64> = stream::iter(0..PLAYERS)
        .map(|n| {
            let app = remote_app(app.address.clone(), app.database_url.clone());
            async move { app.create_player(1_000 + n as i64).await }
        })
        .buffered(16)
        .collect()
        .await;
    eprintln!("abuse: {PLAYERS} players created");
    let watched: Vec<String> = players[..5]
        .iter()
        .map(|id| format!("player:{id}"))
        .collect();
    let mut observer = subscribed(&app, &watched).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_bytes(pid);
    assert!(baseline > 0, "no RSS for pid {pid}");

    // Samples the replica's RSS, probes REST and watches the observer's
    // prices for as long as the hostile clients run.
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak = 0;
            while done.load(Ordering::Acquire) == 0 {
                peak = peak.max(rss_bytes(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        }
    });
    let prober = tokio::spawn({
        let app = remote_app(app.address.clone(), app.database_url.clone());
        let (done, player) = (done.clone(), players[0]);
        async move {
            let mut slowest = Duration::ZERO;
            let mut answered = 0;
            while done.load(Ordering::Acquire) == 0 {
                let started = Instant::now();
                let response = app.get(&format!("/api/v1/players/{player}"), None).await;
                assert_eq!(response.status(), 200, "REST refused during the abuse");
                slowest = slowest.max(started.elapsed());
                answered += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (answered, slowest)
        }
    });
    let watcher = tokio::spawn({
        let done = done.clone();
        async move {
            let mut last = Instant::now();
            let mut longest_gap = Duration::ZERO;
            let mut frames = 0;
            while done.load(Ordering::Acquire) == 0 {
                match observer.read(Duration::from_secs(5)).await {
                    WsRead::Json(frame) if frame["type"] == "prices" => {
                        longest_gap = longest_gap.max(last.elapsed());
                        last = Instant::now();
                        frames += 1;
                    }
                    WsRead::Json(_) => {}
                    other => panic!("the well-behaved socket lost its prices: {other:?}"),
                }
            }
            (observer, frames, longest_gap)
        }
    });

    let started = Instant::now();
    let sleepers: Vec<WsClient> = stream::iter(0..SLEEPERS)
        .map(|_| sleeper(&app, &players))
        .buffer_unordered(16)
        .collect()
        .await;
    // Each hostile client is a task of its own, so a slow one (this test
    // process is a debug build too) does not hold up the others.
    let (app, players) = (Arc::new(app), Arc::new(players));
    let churners = spawn_each(CHURNERS, {
        let (app, players) = (app.clone(), players.clone());
        move |n| {
            let (app, players) = (app.clone(), players.clone());
            async move { churn(&app, &players, n).await }
        }
    });
    let hogger = tokio::spawn({
        let (app, players) = (app.clone(), players.clone());
        async move { hog(&app, &players).await }
    });
    let flooders = spawn_each(FLOODERS, {
        let app = app.clone();
        move |_| {
            let app = app.clone();
            async move { flooder(&app).await }
        }
    });
    let giants = spawn_each(GIANTS, {
        let app = app.clone();
        move |_| {
            let app = app.clone();
            async move { giant(&app).await }
        }
    });
    let binaries = spawn_each(BINARY, {
        let app = app.clone();
        move |_| {
            let app = app.clone();
            async move { binary(&app).await }
        }
    });
    let churned = joined(churners).await;
    hogger.await.expect("hog");
    let flooded = joined(flooders).await;
    let giants = joined(giants).await;
    // Every binary sender is connected (and stays so) before the counts below.
    let binaries = joined(binaries).await;
    eprintln!(
        "abuse: the hostile clients are done after {:?}",
        started.elapsed()
    );
    assert_eq!(churned.iter().sum::<usize>(), CHURNERS * OPS_PER_CHURNER);
    // 1008, unless the flooder's own unread writes made the server's close
    // a reset (then the close frame may be lost); most must see it.
    assert!(
        flooded.iter().all(|code| matches!(code, Some(1008) | None))
            && flooded.iter().filter(|code| code.is_some()).count() >= FLOODERS / 2,
        "{flooded:?}"
    );
    assert!(giants.iter().all(|code| *code == Some(1009)), "{giants:?}");

    // The sleepers are dropped by the server, not by us.
    let deadline = Instant::now() + Duration::from_secs(60);
    let open_expected = (1 + BINARY) as f64;
    loop {
        let open = app.metric("matchday_ws_connections").await;
        if open <= open_expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} sockets still open, expected {open_expected}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let abuse = started.elapsed();
    eprintln!("abuse: the server closed every never-reading socket after {abuse:?}");
    let slow_codes = joined(
        sleepers
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move { close_code(&mut ws, Duration::from_secs(30)).await })
            })
            .collect(),
    )
    .await;
    // 1013, unless the close frame itself could not get past the full
    // buffers before the server dropped the connection.
    assert!(
        slow_codes
            .iter()
            .all(|code| matches!(code, Some(1013) | None)),
        "{slow_codes:?}"
    );

    eprintln!(
        "abuse: sleepers read to their end after {:?}",
        started.elapsed()
    );
    // Past the limit, an upgrade is refused with 503 and nothing is held.
    let mut extra = Vec::new();
    let mut refused = 0;
    for _ in 0..ADMITS - BINARY {
        match tokio_tungstenite::connect_async(ws_url(&app)).await {
            Ok((stream, _)) => extra.push(stream),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Err(other) => panic!("upgrade failed: {other}"),
        }
    }
    assert_eq!(extra.len(), ADMITS - 1 - BINARY);
    assert_eq!(refused, 1);

    eprintln!(
        "abuse: capacity checked after {:?}, {} sockets open, RSS {} MiB",
        started.elapsed(),
        app.metric("matchday_ws_connections").await,
        rss_bytes(pid) >> 20
    );
    done.store(1, Ordering::Release);
    let peak = sampler.await.expect("sampler");
    let (answered, slowest) = prober.await.expect("prober");
    let (mut observer, frames, longest_gap) = watcher.await.expect("watcher");
    observer.expect("prices", Duration::from_secs(2)).await;

    drop(extra);
    drop(binaries);
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.metric("matchday_ws_connections").await > 1.0 {
        assert!(Instant::now() < deadline, "closed sockets still counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed = Instant::now();
    let mut after = rss_bytes(pid);
    while after > baseline + RESIDUE_BYTES && closed.elapsed() < RELEASE_WITHIN {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rss_bytes(pid);
    }
    let released_after = closed.elapsed();

    let sockets = (CHURNERS + 1 + SLEEPERS + FLOODERS + GIANTS + BINARY) as u64;
    let bound = baseline
        + sockets.max(ADMITS as u64) * BYTES_PER_SOCKET
        + SLEEPERS as u64 * BYTES_PER_SLEEPER;
    eprintln!(
        "abuse: {} subscribe ops, {sockets} hostile sockets, {abuse:?}; RSS baseline {} MiB, \
         peak {} MiB (bound {} MiB), after {} MiB ({released_after:?} after the last close); \
         observer {frames} price frames, longest gap {longest_gap:?}; REST {answered} probes, \
         slowest {slowest:?}",
        CHURNERS * OPS_PER_CHURNER,
        baseline >> 20,
        peak >> 20,
        bound >> 20,
        after >> 20
    );
    assert!(peak <= bound, "RSS peaked at {peak} bytes, bound {bound}");
    assert!(
        after <= baseline + RESIDUE_BYTES,
        "RSS {after} bytes {released_after:?} after the sockets closed, baseline {baseline}"
    );
    assert!(
        longest_gap < Duration::from_secs(3),
        "the well-behaved socket waited {longest_gap:?} for prices"
    );
    assert!(
        slowest < Duration::from_secs(3),
        "REST took {slowest:?} during the abuse"
    );
}
