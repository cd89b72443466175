//! Real backing servers for the store tests: a private `redis-server` on a free port (killed on
//! drop, its log in every failure message), a 3-master Redis Cluster, a private PostgreSQL
//! database on the machine's server (dropped on drop), and a private PostgreSQL server that a
//! test can stop and start.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `redis-server` process of the test's own.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server that keeps every acknowledged write (what trackd requires by default).
    pub fn start() -> Self {
        Self::start_durable()
    }

    /// Starts a server without persistence (it forgets everything when it stops).
    pub fn start_volatile() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server that fsyncs its append-only file once a second (a crash can lose the
    /// last second of acknowledged writes).
    pub fn start_everysec() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
    }

    /// Starts a replica of `primary` (keeping every write it receives on disk as well).
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        let port = primary.port.to_string();
        let s = Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--replicaof",
            "127.0.0.1",
            &port,
        ]);
        let t0 = Instant::now();
        while !s
            .cmd(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "replica never synced"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Starts a server with every write on disk before it is acknowledged.
    pub fn start_durable() -> Self {
        Self::start_with(&[
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let log = self.log_path();
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(reply) = self.try_cmd(&["PING"])
                && reply == "PONG"
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not start; log:\n{}",
            self.port,
            self.log()
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<String> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let v: redis::Value = cmd.query(&mut conn)?;
        Ok(match v {
            redis::Value::Nil => String::new(),
            redis::Value::Int(i) => i.to_string(),
            redis::Value::Okay => "OK".into(),
            other => redis::from_redis_value::<String>(other).unwrap_or_default(),
        })
    }

    /// Runs one command and returns its reply as text.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}; log:\n{}", self.log()))
    }

    /// Kills the server at once (SIGKILL): whatever it had not written to disk is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Starts the server again on the same port with an empty directory: all data lost.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.dir = tempfile::tempdir().unwrap();
        self.launch();
    }

    /// Calls per command since start, from `INFO commandstats`.
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        let info = self.cmd(&["INFO", "commandstats"]);
        parse_commandstats(&info)
    }
}

/// Parses `cmdstat_incrby:calls=3,usec=...` lines.
pub fn parse_commandstats(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three cluster-enabled masters joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let t0 = Instant::now();
        for n in &nodes {
            while !n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "cluster never became ok; log:\n{}",
                    n.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { nodes }
    }

    /// Seed URLs, comma-separated, as `tracking.redis_url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keys held by each master: the shards must spread over all of them.
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| {
                let client = redis::Client::open(n.url()).unwrap();
                let mut conn = client.get_connection().unwrap();
                let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
                keys.len()
            })
            .collect()
    }
}

/// A database of the test's own on the machine's PostgreSQL (127.0.0.1:5432, trust auth),
/// dropped when the guard goes.
pub struct PgDatabase {
    pub name: String,
}

const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

fn pg_admin(sql: String) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (.ci/run starts it)");
            tokio::spawn(conn);
            client.batch_execute(&sql).await.expect(&sql);
        })
    })
    .join()
    .unwrap();
}

impl PgDatabase {
    pub fn create() -> Self {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let name = format!(
            "trackd_test_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        pg_admin(format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// Runs SQL as the administrator (e.g. `ALTER DATABASE`).
    pub fn execute(&self, sql: &str) {
        pg_admin(sql.to_owned());
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        pg_admin(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs `trackd seq ...` with the given environment; returns (success, output).
pub fn run_seq(args: &[&str], env: &[(String, String)], data_dir: &Path) -> (bool, String) {
    super::helpers::make_private(data_dir);
    let out = Command::new(env!("CARGO_BIN_EXE_trackd"))
        .arg("seq")
        .args(args)
        .env("TRACKD_TRACKING__PERMUTATION_KEY", super::helpers::KEY_HEX)
        .env("TRACKD_STORAGE__DATA_DIR", data_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run trackd seq");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A private PostgreSQL server on a free port, stopped and deleted on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
    /// More `-c name=value` options of the server.
    extra: String,
}

impl PrivatePostgres {
    pub fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    }

    fn cmd(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// A private server from the installed binaries; fails the test if there are none.
    pub fn start_installed() -> Self {
        let bin = Self::bin_dir().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries under /usr/lib/postgresql (.ci/run installs them)"
            )
        });
        Self::start(bin)
    }

    pub fn start(bin: PathBuf) -> Self {
        let pg = Self::init(bin);
        pg.start_again();
        pg
    }

    fn init(bin: PathBuf) -> Self {
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let ids = |flag: &str| -> u32 {
                let o = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(ids("-u")), Some(ids("-g"))).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            bin,
            dir,
            port,
            as_postgres,
            extra: String::new(),
        };
        let out = pg
            .cmd("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(pg.data())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    /// Starts the server (again, after [`PrivatePostgres::stop`]) on the same port and data.
    pub fn start_again(&self) {
        let (pg, port) = (self, self.port);
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off {}",
            pg.dir.path().display(),
            pg.extra
        );
        let out = pg
            .cmd("pg_ctl")
            .arg("-D")
            .arg(pg.data())
            .arg("-l")
            .arg(pg.dir.path().join("log"))
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            pg.log()
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A private server that accepts TLS with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let bin = Self::bin_dir().expect("PostgreSQL server binaries (.ci/run installs them)");
        let mut pg = Self::init(bin);
        let (cert, key) = (
            pg.dir.path().join("server.crt"),
            pg.dir.path().join("server.key"),
        );
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if pg.as_postgres {
            for f in [&cert, &key] {
                let _ = Command::new("chown").arg("postgres").arg(f).status();
            }
        }
        pg.extra = format!(
            "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
        pg.start_again();
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop(&self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
