//! Operating `meridian serve` and `meridian proxy` as a newcomer would (feature `cli`): the
//! log lines (text and JSON, `RUST_LOG`), the access log, the metrics endpoint scraped over
//! HTTP, `/healthz` and `/readyz` through a graceful stop, and one call followed across the
//! proxy by its W3C trace id.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("meridian-ops-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A long-running `meridian` process: its start-up lines, and its stderr lines as they
/// come (read on a thread). Killed on drop.
struct Daemon {
    child: Child,
    lines: Vec<String>,
    stderr: mpsc::Receiver<String>,
    logged: Vec<String>,
}

impl Daemon {
    /// Starts `meridian ARGS` and reads stdout until a line starting with `last`.
    fn start(args: &[&str], dev: &Path, env: &[(&str, &str)], last: &str) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("MERIDIAN_DEV_DIR", dev)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn meridian");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || forward(stderr, tx));
        let stdout = child.stdout.take().expect("stdout");
        let mut out = BufReader::new(stdout).lines();
        let mut lines = Vec::new();
        loop {
            match out.next() {
                Some(Ok(line)) => {
                    let done = line.starts_with(last);
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                _ => {
                    let err: Vec<String> = rx.try_iter().collect();
                    panic!("meridian {args:?} ended early: {}", err.join("\n"));
                }
            }
        }
        Daemon {
            child,
            lines,
            stderr: rx,
            logged: Vec::new(),
        }
    }

    fn field(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {:?}", self.lines))
            .to_string()
    }

    fn addr(&self, prefix: &str) -> SocketAddr {
        self.field(prefix).parse().expect("address")
    }

    /// Waits (up to 10 s) for a stderr line containing every needle; returns it.
    fn wait_log(&mut self, needles: &[&str]) -> String {
        self.log_within(needles, Duration::from_secs(10))
            .unwrap_or_else(|| {
                panic!(
                    "no log line with {needles:?} in:\n{}",
                    self.logged.join("\n")
                )
            })
    }

    /// A stderr line containing every needle, if one comes within `wait`.
    fn log_within(&mut self, needles: &[&str], wait: Duration) -> Option<String> {
        let end = Instant::now() + wait;
        loop {
            if let Some(l) = self
                .logged
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(l.clone());
            }
            let left = end.saturating_duration_since(Instant::now());
            match self
                .stderr
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(l) => self.logged.push(l),
                Err(_) if Instant::now() >= end => return None,
                Err(_) => {}
            }
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits (up to 20 s) for the process to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().expect("wait") {
                self.logged.extend(self.stderr.try_iter());
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the process did not exit within 20 s");
    }
}

fn forward(stderr: ChildStderr, tx: mpsc::Sender<String>) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { return };
        if tx.send(line).is_err() {
            return;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (bounded).
fn run(args: &[&str], dev: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("MERIDIAN_DEV_DIR", dev)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("meridian {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP GET: status code and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The value of `name{...labels...}` in an exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        (metric == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .then(|| value.parse().ok())
        .flatten()
    })
}

#[test]
fn serve_logs_json_exposes_metrics_and_drains_with_readyz_failing() {
    let dir = Scratch::new("serve");
    let mut serve = Daemon::start(
        &[
            "serve",
            "--insecure-dev",
            "--region",
            "eu",
            "--id",
            "eu-1",
            "--metrics",
            "127.0.0.1:0",
            "--access-log",
            "--log-format",
            "json",
        ],
        &dir.0,
        &[],
        "metrics: ",
    );
    let addr = serve.addr("address: ").to_string();
    let http = serve.addr("metrics: ");
    // Every stderr line so far is a JSON object; the lifecycle line says "serving".
    let started = serve.wait_log(&["\"serving\""]);
    let v: serde_json::Value = serde_json::from_str(&started).expect("a JSON log line");
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["region"], "eu", "{v}");

    let ok = run(
        &[
            "call",
            "--connect",
            &addr,
            "--insecure-dev",
            "add",
            "10",
            "5",
        ],
        &dir.0,
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "15");
    let failed = run(
        &["call", "--connect", &addr, "--insecure-dev", "add", "1"],
        &dir.0,
    );
    assert_eq!(failed.status.code(), Some(1));

    let access = serve.wait_log(&["meridian::access", "\"add\"", "\"OK\""]);
    let v: serde_json::Value = serde_json::from_str(&access).expect("JSON");
    assert_eq!(v["method"], "add", "{v}");
    assert!(v["duration_us"].as_u64().is_some(), "{v}");
    assert!(
        v["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{v}"
    );
    serve.wait_log(&["meridian::access", "\"INVALID_ARGUMENT\""]);

    let (status, text) = get(http, "/metrics");
    assert_eq!(status, 200);
    let calls = "meridian_server_calls_total";
    assert_eq!(
        sample(&text, calls, &[("method", "add"), ("code", "OK")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            calls,
            &[("method", "add"), ("code", "INVALID_ARGUMENT")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get(http, "/healthz").0, 200);
    assert_eq!(get(http, "/readyz").0, 200);

    // A call in flight keeps the server draining after SIGTERM: /readyz fails meanwhile,
    // the call completes, the process exits 0.
    let sleeper = Command::new(BIN)
        .args([
            "call",
            "--connect",
            &addr,
            "--insecure-dev",
            "sleep",
            "1500",
        ])
        .env("MERIDIAN_DEV_DIR", &dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn call");
    let end = Instant::now() + Duration::from_secs(10);
    while sample(
        &get(http, "/metrics").1,
        "meridian_server_calls_in_flight",
        &[("method", "sleep")],
    ) != Some(1.0)
    {
        assert!(Instant::now() < end, "the sleep call never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    serve.sigterm();
    serve.wait_log(&["draining"]);
    let (status, body) = get(http, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let out = sleeper.wait_with_output().expect("call output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1500");
    assert_eq!(serve.wait_exit(), Some(0));
    for line in &serve.logged {
        // Progress notes are plain text; every log event is one JSON object.
        if line.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        }
    }
}

#[test]
fn rust_log_filters_the_lines() {
    let dir = Scratch::new("rustlog");
    let mut serve = Daemon::start(
        &["serve", "--insecure-dev", "--access-log"],
        &dir.0,
        &[("RUST_LOG", "meridian::access=info,warn")],
        "methods: ",
    );
    let addr = serve.field("address: ");
    run(
        &["call", "--connect", &addr, "--insecure-dev", "echo", "1"],
        &dir.0,
    );
    serve.wait_log(&["meridian::access", "method=\"echo\""]);
    assert!(
        !serve.logged.iter().any(|l| l.contains(" serving ")),
        "the info lifecycle line is filtered out: {:?}",
        serve.logged
    );
}

#[test]
fn one_call_is_followed_across_the_proxy_by_its_trace_id() {
    let dir = Scratch::new("trace");
    let mut serve = Daemon::start(
        &["serve", "--insecure-dev", "--region", "eu", "--access-log"],
        &dir.0,
        &[],
        "methods: ",
    );
    let server = serve.field("address: ");
    let dev = dir.0.display();
    let config = format!(
        "listen = \"127.0.0.1:0\"\nproxy_region = \"edge\"\naccess_log = true\n\
         [tls]\ncert = \"{dev}/server.pem\"\nkey = \"{dev}/server.key\"\nca = \"{dev}/ca.pem\"\n\
         [[region]]\nname = \"eu\"\nservers = [{{ addr = \"{server}\" }}]\n"
    );
    let file = dir.0.join("proxy.toml");
    std::fs::write(&file, config).unwrap();
    let mut proxy = Daemon::start(
        &[
            "proxy",
            "--config",
            file.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
        &dir.0,
        &[],
        "metrics: ",
    );
    let via = proxy.field("address: ");
    let http = proxy.addr("metrics: ");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace}-00f067aa0ba902b7-01");
    let md = format!("traceparent={parent}");
    let end = Instant::now() + Duration::from_secs(10);
    let hop = loop {
        let o = run(
            &[
                "call",
                "--connect",
                &via,
                "--insecure-dev",
                "--metadata",
                &md,
                "add",
                "2",
                "3",
            ],
            &dir.0,
        );
        // Until the upstream's HELLO reaches the proxy, the proxy does not know "add" and
        // forwards it as a stream each way; such a hop names the server's id and region
        // only if the HELLO has come by the end of the call. The first call that succeeds
        // may be one whose hop came too early, so calls go on until a hop names its server.
        let expected = format!("upstream=\"eu/{server}@{server}\"");
        let hop = (String::from_utf8_lossy(&o.stdout).trim() == "5")
            .then(|| {
                proxy.log_within(
                    &["meridian::access", trace, "code=\"OK\"", &expected],
                    Duration::from_secs(1),
                )
            })
            .flatten();
        if let Some(hop) = hop {
            break hop;
        }
        assert!(
            Instant::now() < end,
            "no call through the proxy succeeded: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(hop.contains("parent_span=\"00f067aa0ba902b7\""), "{hop}");
    assert!(
        hop.contains(&format!("upstream=\"eu/{server}@{server}\"")),
        "{hop}"
    );
    let span = hop
        .split("span_id=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the proxy's span id")
        .to_string();
    assert_eq!(span.len(), 16, "{hop}");
    let at_server = serve.wait_log(&["meridian::access", trace, "code=\"OK\""]);
    assert!(
        at_server.contains(&format!("parent_span=\"{span}\"")),
        "the server's parent is the proxy's hop: {at_server}\nproxy: {hop}"
    );
    let (status, text) = get(http, "/metrics");
    assert_eq!(status, 200);
    assert!(
        sample(&text, "meridian_proxy_forwarded_total", &[]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "meridian_region_healthy", &[("region", "eu")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get(http, "/readyz").0, 200);
}

#[test]
fn probe_shows_what_each_servers_health_method_answers() {
    let dir = Scratch::new("probe");
    let serve = Daemon::start(
        &["serve", "--insecure-dev", "--region", "eu", "--id", "eu-1"],
        &dir.0,
        &[],
        "methods: ",
    );
    let addr = serve.field("address: ");
    let file = dir.0.join("regions.toml");
    std::fs::write(
        &file,
        format!("[[region]]\nname = \"eu\"\nservers = [{{ addr = \"{addr}\" }}]\n"),
    )
    .unwrap();
    let o = run(
        &[
            "probe",
            "--regions",
            file.to_str().unwrap(),
            "--insecure-dev",
            "--json",
            "--interval",
            "300ms",
        ],
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).expect("JSON");
    assert_eq!(v["servers"][0]["server"], "eu-1", "{v}");
    assert_eq!(v["servers"][0]["health"], "SERVING", "{v}");
}

#[cfg(unix)]
#[test]
fn a_dev_directory_open_to_other_users_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("devperm");
    let dev = dir.0.join("dev");
    // Made by a first serve, then opened up as another user could have left it.
    let first = Daemon::start(&["serve", "--insecure-dev"], &dev, &[], "methods: ");
    let addr = first.field("address: ");
    let ok = run(
        &["call", "--connect", &addr, "--insecure-dev", "echo", "1"],
        &dev,
    );
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = run(
        &["call", "--connect", &addr, "--insecure-dev", "echo", "1"],
        &dev,
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing the dev directory") && err.contains("777"),
        "{err}"
    );
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = dev.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["serve", "--insecure-dev"], &dev);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("server.key has mode 644"),
        "{o:?}"
    );
}

#[cfg(unix)]
#[test]
fn sighup_reloads_the_server_certificate() {
    let dir = Scratch::new("sighup");
    let write_identity = |ca: &meridian::DevCa, tag: &str| {
        let id = ca.issue_server(&["localhost"]).expect("issue");
        let chain: String = id
            .chain
            .iter()
            .map(|c| meridian::transport::pem_encode("CERTIFICATE", c))
            .collect();
        std::fs::write(dir.0.join("server.pem"), chain).unwrap();
        std::fs::write(
            dir.0.join("server.key"),
            meridian::transport::pem_encode("PRIVATE KEY", id.key.secret_der()),
        )
        .unwrap();
        let ca_file = dir.0.join(format!("{tag}-ca.pem"));
        std::fs::write(&ca_file, ca.certificate_pem()).unwrap();
        ca_file.to_str().unwrap().to_string()
    };
    let (old, new) = (
        meridian::DevCa::new().unwrap(),
        meridian::DevCa::new().unwrap(),
    );
    let old_ca = write_identity(&old, "old");
    let cert = dir.0.join("server.pem");
    let key = dir.0.join("server.key");
    let mut serve = Daemon::start(
        &[
            "serve",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &dir.0,
        &[],
        "methods: ",
    );
    let addr = serve.field("address: ");
    let call = |ca: &str| {
        run(
            &["call", "--connect", &addr, "--ca", ca, "add", "1", "2"],
            &dir.0,
        )
    };
    assert_eq!(call(&old_ca).status.code(), Some(0));
    let new_ca = write_identity(&new, "new");
    let hup = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    serve.wait_log(&["certificates reloaded"]);
    let o = call(&new_ca);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = call(&old_ca);
    assert_eq!(
        o.status.code(),
        Some(5),
        "the old CA no longer verifies it: {o:?}"
    );
    // A key that does not match is refused, and the current certificate stays.
    std::fs::write(
        &key,
        meridian::transport::pem_encode(
            "PRIVATE KEY",
            old.issue_server(&["localhost"]).unwrap().key.secret_der(),
        ),
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .unwrap();
    serve.wait_log(&["certificate reload failed"]);
    assert_eq!(call(&new_ca).status.code(), Some(0));
}

#[cfg(unix)]
#[test]
fn sighup_rereads_the_client_cas_of_a_mutual_tls_server() {
    let dir = Scratch::new("sighup-mtls");
    let pem = |der: &[rustls::pki_types::CertificateDer<'static>]| -> String {
        der.iter()
            .map(|c| meridian::transport::pem_encode("CERTIFICATE", c))
            .collect()
    };
    let write = |name: &str, text: String| {
        let p = dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let servers = meridian::DevCa::new().unwrap();
    let (old_clients, new_clients) = (
        meridian::DevCa::new().unwrap(),
        meridian::DevCa::new().unwrap(),
    );
    let server_id = servers.issue_server(&["localhost"]).unwrap();
    let cert = write("server.pem", pem(&server_id.chain));
    let key = write(
        "server.key",
        meridian::transport::pem_encode("PRIVATE KEY", server_id.key.secret_der()),
    );
    let ca = write("servers-ca.pem", servers.certificate_pem());
    let client_cas = write("client-cas.pem", old_clients.certificate_pem());
    let client_files = |ca: &meridian::DevCa, tag: &str| {
        let id = ca.issue_client(&format!("{tag}-client")).unwrap();
        (
            write(&format!("{tag}.pem"), pem(&id.chain)),
            write(
                &format!("{tag}.key"),
                meridian::transport::pem_encode("PRIVATE KEY", id.key.secret_der()),
            ),
        )
    };
    let old_client = client_files(&old_clients, "old");
    let new_client = client_files(&new_clients, "new");
    let mut serve = Daemon::start(
        &["serve", "--cert", &cert, "--key", &key, "--ca", &client_cas],
        &dir.0,
        &[],
        "methods: ",
    );
    let addr = serve.field("address: ");
    let call = |(c, k): &(String, String)| {
        run(
            &[
                "call",
                "--connect",
                &addr,
                "--server-name",
                "localhost",
                "--ca",
                &ca,
                "--cert",
                c,
                "--key",
                k,
                "add",
                "1",
                "2",
            ],
            &dir.0,
        )
    };
    let o = call(&old_client);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = call(&new_client);
    assert_ne!(o.status.code(), Some(0), "not yet trusted: {o:?}");

    // The client CA file now names the new CA; SIGHUP rereads it with the certificate.
    write("client-cas.pem", new_clients.certificate_pem());
    let hup = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    serve.wait_log(&["certificates reloaded"]);
    let o = call(&new_client);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = call(&old_client);
    assert_ne!(
        o.status.code(),
        Some(0),
        "the old CA's clients are refused now: {o:?}"
    );
}
