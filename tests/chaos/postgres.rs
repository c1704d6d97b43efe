//! A Postgres cluster of the chaos test's own (initdb in a temporary
//! directory, its own port), so the test can crash and restart it without
//! touching the server every other test shares.
//!
//! `MATCHDAY_TEST_PG_BIN` names the directory holding `initdb` and
//! `postgres` (default: the newest `/usr/lib/postgresql/*/bin`). Postgres
//! refuses to run as root, so as root both run as `MATCHDAY_TEST_PG_USER`
//! (default `postgres`; scripts/test passes its service user).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{die_with_parent, free_port};

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    uid: Option<(u32, u32)>,
    child: Option<Child>,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MATCHDAY_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|dir| dir.join("postgres").exists());
    found.sort_by_key(|dir| {
        dir.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .expect("no Postgres server binaries: set MATCHDAY_TEST_PG_BIN")
}

/// When running as root, the ids of the user to run Postgres as:
/// `MATCHDAY_TEST_PG_USER` (scripts/test passes its service user), else
/// `postgres`. None when not root.
fn run_as() -> Option<(u32, u32)> {
    let name = std::env::var("MATCHDAY_TEST_PG_USER").unwrap_or_else(|_| "postgres".into());
    let name = std::ffi::CString::new(name).expect("a user name");
    // SAFETY: geteuid has no preconditions; getpwnam returns a pointer to a
    // static record (or null) read at once, before any other getpw* call.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let entry = libc::getpwnam(name.as_ptr());
        assert!(
            !entry.is_null(),
            "running as root needs a user to run Postgres as: {name:?} does not exist"
        );
        Some(((*entry).pw_uid, (*entry).pw_gid))
    }
}

impl PgServer {
    /// initdb (trust authentication, superuser `matchday`) and start.
    pub async fn start() -> PgServer {
        // Under the system temporary directory: the repository may sit in a
        // home directory the `postgres` user cannot enter.
        let dir = std::env::temp_dir().join(format!(
            "matchday-chaos-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("Postgres directory");
        let uid = run_as();
        if let Some((user, group)) = uid {
            std::os::unix::fs::chown(&dir, Some(user), Some(group)).expect("chown");
        }
        let mut server = PgServer {
            port: free_port(),
            dir,
            bin: bin_dir(),
            uid,
            child: None,
        };
        let mut initdb = Command::new(server.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(server.dir.join("data"))
            .args(["-U", "matchday", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        server.as_owner(&mut initdb);
        let status = initdb.status().expect("run initdb");
        assert!(status.success(), "initdb failed ({status})");
        server.spawn().await;
        server
    }

    fn as_owner<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        use std::os::unix::process::CommandExt;
        if let Some((user, group)) = self.uid {
            command.uid(user).gid(group);
        }
        command
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://matchday@127.0.0.1:{}/postgres", self.port)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://matchday@127.0.0.1:{}/{database}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .expect("Postgres log");
        let stderr = log.try_clone().expect("Postgres log");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        self.as_owner(&mut command);
        // SIGQUIT is Postgres' immediate shutdown: backends go with it.
        die_with_parent(&mut command, libc::SIGQUIT);
        self.child = Some(command.spawn().expect("start postgres"));
        let started = Instant::now();
        loop {
            if tokio_postgres::connect(&self.admin_url(), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Postgres did not come up; see {}",
                self.dir.join("postgres.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, every backend killed,
    /// crash recovery on start), then start again on the same port.
    pub async fn crash_and_restart(&mut self, down_for: Duration) {
        self.stop();
        tokio::time::sleep(down_for).await;
        self.spawn().await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }

    pub async fn create_database(&self, name: &str) {
        let (client, connection) =
            tokio_postgres::connect(&self.admin_url(), tokio_postgres::NoTls)
                .await
                .expect("connect to the chaos Postgres");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("Postgres data and log kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
