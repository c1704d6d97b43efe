//! The committed `config/nginx/matchday.conf` in front of three replicas,
//! as `scripts/cluster` runs it: REST and WebSocket upgrades pass through,
//! sockets spread over every replica, and a killed replica is routed around.
//!
//! nginx comes from `MATCHDAY_TEST_NGINX` (scripts/test installs Debian's
//! package and sets it), else `/usr/sbin/nginx`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::cluster::*;
use crate::helpers::*;

/// The committed site with `replicas` in its upstream and listening on
/// `port` (what scripts/cluster's awk does).
fn site(template: &str, replicas: &[u16], port: u16) -> String {
    let mut out = String::new();
    let (mut in_upstream, mut listed, mut listens) = (false, false, false);
    for line in template.lines() {
        if line.starts_with("upstream matchday {") {
            in_upstream = true;
        } else if in_upstream && line.trim_start().starts_with("server ") {
            if !listed {
                for replica in replicas {
                    out.push_str(&format!(
                        "    server 127.0.0.1:{replica} max_fails=3 fail_timeout=5s;\n"
                    ));
                }
                listed = true;
            }
            continue;
        } else if in_upstream && line.starts_with('}') {
            in_upstream = false;
        }
        if line.trim() == "listen 8080;" {
            out.push_str(&format!("    listen 127.0.0.1:{port};\n"));
            listens = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        listed && listens,
        "config/nginx/matchday.conf changed shape"
    );
    out
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

struct Nginx {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master stops its workers (a killed master
    /// would leave them running, holding the port and the test's pipes).
    fn drop(&mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test keeps nginx's prefix, error log included.
            eprintln!("nginx prefix kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Nginx {
    /// nginx in the foreground, with its own prefix under the system temp
    /// directory (its workers run as `nobody` under root, and must reach it).
    fn start(cluster: &Cluster) -> Nginx {
        let binary = std::env::var("MATCHDAY_TEST_NGINX").unwrap_or("/usr/sbin/nginx".into());
        assert!(
            Path::new(&binary).exists(),
            "nginx not found at {binary}: scripts/test installs it (apt-get install nginx-light)"
        );
        let port = free_port();
        let ports: Vec<u16> = cluster.replicas.iter().map(|r| r.port).collect();
        let dir: PathBuf = std::env::temp_dir().join(format!("matchday-nginx-{port}"));
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx prefix");
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx/matchday.conf"),
        )
        .expect("config/nginx/matchday.conf");
        std::fs::write(dir.join("matchday.conf"), site(&template, &ports, port)).expect("site");
        let d = dir.display();
        let user = if running_as_root() {
            "user nobody nogroup;"
        } else {
            ""
        };
        let conf = format!(
            "{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/matchday.conf;
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let mut command = Command::new(&binary);
        // SIGTERM, so the master stops its workers on its way out.
        let child = die_with_parent(&mut command, libc::SIGTERM)
            .args(["-g", "daemon off;", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx {
            child,
            address: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_with_the_committed_config_carries_rest_and_sockets_to_every_replica() {
    let mut cluster = Cluster::start(3, &[("MATCHDAY__LIMITS__TRUST_FORWARDED_FOR", "true")]).await;
    let nginx = Nginx::start(&cluster);
    let proxy = remote_app(nginx.address.clone(), String::new());
    proxy.wait_until_ready(Duration::from_secs(10)).await;

    // REST through the proxy.
    let player = proxy.create_player(1_000).await;
    let users = proxy.bulk_users("proxied", 6, 1_000_000).await;
    let channels = ["events".to_string(), format!("player:{player}")];
    // Sockets through the proxy: least_conn spreads them over the replicas.
    let mut sockets = Vec::new();
    for _ in 0..6 {
        sockets.push(subscribed(&proxy, &channels).await);
    }
    for n in 0..3 {
        let open = cluster.app(n).metric("matchday_ws_connections").await;
        assert!(
            open >= 1.0,
            "replica {n} holds {open} of the 6 proxied sockets"
        );
    }
    // An event pushed to one replica directly reaches every proxied socket once.
    let pushed = cluster.app(2).push_event("via-nginx", player, "goal").await;
    assert!(pushed.status().is_success());
    let received = join_all(
        sockets
            .iter_mut()
            .map(|ws| frames_for(ws, Duration::from_millis(1500))),
    )
    .await;
    for (n, frames) in received.iter().enumerate() {
        let events = frames
            .iter()
            .filter(|(_, f)| f["type"] == "event" && f["event_id"] == "via-nginx")
            .count();
        assert_eq!(events, 1, "proxied socket {n} got the event {events} times");
    }

    // A replica killed: nginx routes around it, for REST and new sockets.
    cluster.kill(0);
    let other = proxy.create_player(2_000).await;
    for (n, user) in users.iter().enumerate() {
        let body = json!({"player_id": other, "side": "buy", "quantity": 1});
        let response = proxy
            .order(&user.token, &format!("after-kill-{n}"), &body)
            .await;
        assert_eq!(
            response.status(),
            201,
            "order {n} through nginx after the kill"
        );
    }
    let mut ws = subscribed(&proxy, &[format!("player:{other}")]).await;
    ws.send(json!({"op": "ping"})).await;
    ws.expect("pong", Duration::from_secs(2)).await;
    assert_eq!(proxy.audit().await["ok"], true);
}
