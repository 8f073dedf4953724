//! A real, throw-away etcd for tests and examples (features `testing` and `etcd`).
//!
//! [`EtcdProcess::start`] runs the `etcd` binary (from `MERIDIAN_ETCD_BIN`, else `etcd` on
//! `PATH`; `bash scripts/etcd.sh install` installs Debian's `etcd-server`) on two free
//! loopback ports with a data directory of its own under the system's temporary
//! directory. It can be stopped and started again on the same ports and data, as an etcd
//! restart would, and it is killed and its directory removed when dropped.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A local single-member etcd cluster, owned by the test that started it.
#[derive(Debug)]
pub struct EtcdProcess {
    binary: PathBuf,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The environment variable naming the etcd binary.
pub const ETCD_BIN_ENV: &str = "MERIDIAN_ETCD_BIN";

impl EtcdProcess {
    /// The etcd binary: `$MERIDIAN_ETCD_BIN`, else `etcd` found on `PATH`.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(ETCD_BIN_ENV) {
            let p = PathBuf::from(p);
            return p.is_file().then_some(p);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    }

    /// Starts etcd on free loopback ports with a fresh data directory and waits (up to
    /// 15 s) until it answers. An error of kind `NotFound` means no etcd binary.
    pub fn start() -> io::Result<EtcdProcess> {
        let binary = Self::binary().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no etcd binary: set {ETCD_BIN_ENV} or run `bash scripts/etcd.sh install`"),
            )
        })?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let data_dir = std::env::temp_dir().join(format!(
            "meridian-etcd-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&data_dir)?;
        // Both listeners open at once, so the two ports differ.
        let (a, b) = (
            TcpListener::bind("127.0.0.1:0")?,
            TcpListener::bind("127.0.0.1:0")?,
        );
        let mut etcd = EtcdProcess {
            binary,
            data_dir,
            client_port: a.local_addr()?.port(),
            peer_port: b.local_addr()?.port(),
            child: None,
        };
        drop((a, b));
        etcd.spawn()?;
        Ok(etcd)
    }

    /// [`start`](Self::start) for tests: with no etcd binary, `None` (and a note on
    /// stderr) so the test can skip, except under `CI=true`, where that panics like any
    /// other failure to start, since CI installs etcd first.
    pub fn start_or_skip() -> Option<EtcdProcess> {
        match EtcdProcess::start() {
            Ok(e) => Some(e),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && std::env::var("CI").as_deref() != Ok("true") =>
            {
                eprintln!("SKIPPED (no etcd; `bash scripts/etcd.sh install`): {e}");
                None
            }
            Err(e) => panic!("cannot start etcd: {e}"),
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The data directory (removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills etcd (SIGKILL, as a crash would) and waits for it to exit. Data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory, and waits until it answers.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("etcd.log"))?;
        let child = Command::new(&self.binary)
            .arg("--name=meridian-test")
            .arg(format!(
                "--data-dir={}",
                self.data_dir.join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=meridian-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(15))
    }

    /// Waits until the client port accepts connections and etcd serves its health URL.
    fn wait_ready(&mut self, limit: Duration) -> io::Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if !self.is_running() {
                return Err(io::Error::other(format!(
                    "etcd exited at start; see {}",
                    self.data_dir.join("etcd.log").display()
                )));
            }
            if health_ok(addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "etcd did not become healthy in time",
        ))
    }
}

/// `GET /health` over plain HTTP/1.1: etcd answers `{"health":"true"}` once it has a leader.
fn health_ok(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
