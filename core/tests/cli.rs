//! The `meridian` command-line tool, run as a binary against real servers (feature `cli`):
//! every subcommand, and every kind of bad input with its exit code.
//!
//! Long on purpose: one binary under test, one scratch-directory and process-runner
//! fixture, one test per subcommand or failure class.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
            std::env::temp_dir().join(format!("meridian-cli-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `meridian serve` process, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Serve {
    fn start(dev_dir: &Path, region: &str, id: &str) -> Serve {
        Serve::start_with(dev_dir, region, id, &[])
    }

    /// A dev server with more flags (e.g. `--ca FILE` to require client certificates).
    fn start_with(dev_dir: &Path, region: &str, id: &str, extra: &[&str]) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--insecure-dev", "--region", region, "--id", id])
            .args(extra)
            .env("MERIDIAN_DEV_DIR", dev_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meridian serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut fingerprint) = (None, None);
        let mut done = false;
        while !done {
            let Some(Ok(line)) = lines.next() else {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("meridian serve ended early: {err}");
            };
            if let Some(a) = line.strip_prefix("address: ") {
                addr = Some(a.parse().expect("address"));
            } else if let Some(f) = line.strip_prefix("fingerprint: ") {
                fingerprint = Some(f.to_string());
            } else if line.starts_with("methods: ") {
                done = true;
            }
        }
        Serve {
            child,
            addr: addr.expect("address"),
            fingerprint: fingerprint.expect("fingerprint"),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (bounded: a hung command fails the test).
fn run(args: &[&str], dev_dir: &Path) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .env("MERIDIAN_DEV_DIR", dev_dir)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian");
    finish(child, args)
}

/// Waits (bounded: a hung command fails the test) for `child` to exit, reading its
/// output meanwhile so a large one cannot fill the pipe and block it.
fn finish(mut child: Child, args: &[&str]) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("meridian {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts an exit code and a one-line error without a panic or backtrace.
fn assert_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line only: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn region_file(dir: &Scratch, regions: &[(&str, SocketAddr)]) -> PathBuf {
    let text: String = regions
        .iter()
        .map(|(name, addr)| {
            format!("[[region]]\nname = \"{name}\"\nservers = [{{ addr = \"{addr}\" }}]\n")
        })
        .collect();
    let path = dir.path("regions.toml");
    std::fs::write(&path, text).expect("region file");
    path
}

/// The top-level help lists the exit codes in full; each subcommand's help gives them in
/// one line that points there.
#[test]
fn help_for_every_subcommand_lists_exit_codes() {
    let dir = Scratch::new("help");
    let o = run(&["--help"], &dir.0);
    assert!(o.status.success());
    let top = stdout(&o);
    assert!(top.contains("5  untrusted"), "{top}");
    assert!(!top.contains("not available yet"), "{top}");
    for sub in ["serve", "call", "probe", "bench", "proxy", "demo"] {
        assert!(top.contains(sub), "{sub} missing from --help");
        let o = run(&[sub, "--help"], &dir.0);
        assert!(o.status.success(), "{sub} --help: {}", stderr(&o));
        let text = stdout(&o);
        let line = text
            .lines()
            .find(|l| l.starts_with("Exit codes:"))
            .unwrap_or_else(|| panic!("{sub} --help: {text}"));
        assert!(
            line.contains("5 untrusted") && line.contains("meridian --help"),
            "{line}"
        );
        assert!(
            !text.contains("anything else"),
            "{sub} --help repeats the block: {text}"
        );
    }
    let o = run(&["serve", "--help"], &dir.0);
    assert!(stdout(&o).contains("--insecure-dev"));
}

#[test]
fn serve_prints_address_and_fingerprint_and_call_works() {
    let dir = Scratch::new("call");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    assert!(server.fingerprint.starts_with("sha256:"));
    assert_eq!(server.fingerprint.len(), "sha256:".len() + 64);
    // The fingerprint is the SHA-256 of the certificate in the dev directory.
    assert!(dir.path("server.pem").exists() && dir.path("ca.pem").exists());
    let addr = server.addr.to_string();
    let base = [
        "call",
        "--connect",
        addr.as_str(),
        "--insecure-dev",
        "--json",
    ];

    let o = run(&[&base[..], &["add", "10", "5"]].concat(), &dir.0);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o)), serde_json::json!(15));

    let o = run(&[&base[..], &["add", "[-7, 2]"]].concat(), &dir.0);
    assert_eq!(json(&stdout(&o)), serde_json::json!(-5));

    let doc = r#"{"a": [1, 2.5, null, true, "x"], "b": {"c": -3}}"#;
    let o = run(&[&base[..], &["echo", doc]].concat(), &dir.0);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o)), json(doc));

    // Metadata reaches the server; the server says who it is.
    let o = run(
        &[
            &base[..],
            &["where", "--metadata", "tenant=blue", "--metadata", "x=1"],
        ]
        .concat(),
        &dir.0,
    );
    let v = json(&stdout(&o));
    assert_eq!(v["region"], "eu");
    assert_eq!(v["server"], "eu-1");
    assert_eq!(v["metadata"]["tenant"], "blue");
    assert_eq!(v["metadata"]["x"], "1");

    // Server streaming: one JSON line per message.
    let o = run(&[&base[..], &["count", "[4, 5]"]].concat(), &dir.0);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(json).collect();
    assert_eq!(
        lines,
        (1..=4).map(|i| serde_json::json!(i)).collect::<Vec<_>>()
    );

    // --describe lists the HELLO catalog.
    let o = run(&[&base[..4], &["--describe"]].concat(), &dir.0);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for m in ["add", "count", "echo", "sleep", "where", "server-streaming"] {
        assert!(text.contains(m), "{m} missing: {text}");
    }
    let o = run(&[&base[..], &["--describe"]].concat(), &dir.0);
    let v = json(&stdout(&o));
    assert_eq!(v["servers"][0]["region"], "eu");
    let names: Vec<&str> = v["servers"][0]["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["add", "count", "echo", "sleep", "where"]);
}

#[test]
fn call_errors_have_status_names_and_exit_codes() {
    let dir = Scratch::new("errors");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let addr = server.addr.to_string();
    let base = ["call", "--connect", addr.as_str(), "--insecure-dev"];

    let o = run(
        &[&base[..], &["add", "[9223372036854775807, 1]"]].concat(),
        &dir.0,
    );
    assert_error(&o, 1, "OUT_OF_RANGE: sum overflows");

    let o = run(&[&base[..], &["no_such_method"]].concat(), &dir.0);
    assert_error(&o, 1, "UNIMPLEMENTED");

    let t = Instant::now();
    let o = run(
        &[&base[..], &["sleep", "5000", "--timeout", "200ms"]].concat(),
        &dir.0,
    );
    assert_error(&o, 1, "DEADLINE_EXCEEDED");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // Bad JSON: usage error, before any connection.
    let o = run(&[&base[..], &["echo", "{bad json"]].concat(), &dir.0);
    assert_error(&o, 2, "bad JSON argument");
    let o = run(&[&base[..], &["echo", "1 2"]].concat(), &dir.0);
    assert_error(&o, 2, "bad JSON argument");

    // Bad metadata and durations are usage errors (clap's own message, exit 2).
    let o = run(
        &[&base[..], &["echo", "--metadata", "novalue"]].concat(),
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        &[&base[..], &["echo", "--timeout", "soon"]].concat(),
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unreachable_server_fails_within_the_connect_timeout() {
    let dir = Scratch::new("unreachable");
    // A bound UDP socket that never answers: the handshake can only time out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = silent.local_addr().expect("addr").to_string();
    // The dev CA must exist for --insecure-dev; make it with a short-lived server.
    drop(Serve::start(&dir.0, "eu", "eu-1"));
    let t = Instant::now();
    let o = run(
        &[
            "call",
            "--connect",
            &addr,
            "--insecure-dev",
            "--connect-timeout",
            "500ms",
            "echo",
        ],
        &dir.0,
    );
    assert_error(&o, 4, "cannot reach");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // The same through a region file: no server of it answers.
    let regions = region_file(&dir, &[("eu", silent.local_addr().expect("addr"))]);
    let o = run(
        &[
            "probe",
            "--regions",
            regions.to_str().expect("path"),
            "--insecure-dev",
            "--connect-timeout",
            "500ms",
        ],
        &dir.0,
    );
    assert_error(&o, 4, "cannot reach");
}

#[test]
fn untrusted_certificate_is_refused() {
    let dir = Scratch::new("untrusted");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let addr = server.addr.to_string();
    // A CA that did not issue the server's certificate.
    let other = meridian::DevCa::new().expect("ca");
    let ca = dir.path("other-ca.pem");
    std::fs::write(&ca, other.certificate_pem()).expect("write");
    let o = run(
        &[
            "call",
            "--connect",
            &addr,
            "--ca",
            ca.to_str().expect("path"),
            "echo",
            "1",
        ],
        &dir.0,
    );
    assert_error(&o, 5, "TLS handshake");

    // Another dev directory has another dev CA.
    let elsewhere = Scratch::new("untrusted-dev");
    drop(Serve::start(&elsewhere.0, "x", "x-1"));
    let o = run(
        &["call", "--connect", &addr, "--insecure-dev", "echo", "1"],
        &elsewhere.0,
    );
    assert_error(&o, 5, "TLS handshake");

    // No trust given at all, or a dev directory that was never made: configuration errors.
    let o = run(&["call", "--connect", &addr, "echo", "1"], &dir.0);
    assert_error(&o, 3, "--insecure-dev");
    let empty = Scratch::new("untrusted-empty");
    let o = run(
        &["call", "--connect", &addr, "--insecure-dev", "echo"],
        &empty.0,
    );
    assert_error(&o, 3, "no dev CA");
}

#[test]
fn region_routing_unknown_region_and_probe() {
    let dir = Scratch::new("regions");
    let eu = Serve::start(&dir.0, "eu", "eu-1");
    let us = Serve::start(&dir.0, "us", "us-1");
    let regions = region_file(&dir, &[("eu", eu.addr), ("us", us.addr)]);
    let file = regions.to_str().expect("path");

    // Pinned to one region of the file, the call lands there.
    for (region, id) in [("eu", "eu-1"), ("us", "us-1")] {
        let o = run(
            &[
                "call",
                "--regions",
                file,
                "--insecure-dev",
                "--region",
                region,
                "where",
                "--json",
            ],
            &dir.0,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(json(&stdout(&o))["server"], id);
    }
    // Routed across both regions.
    let o = run(
        &["call", "--regions", file, "--insecure-dev", "add", "2", "3"],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o)), serde_json::json!(5));
    let o = run(
        &[
            "call",
            "--regions",
            file,
            "--insecure-dev",
            "--json",
            "count",
            "2",
        ],
        &dir.0,
    );
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));

    let o = run(
        &[
            "call",
            "--regions",
            file,
            "--insecure-dev",
            "--region",
            "mars",
            "where",
        ],
        &dir.0,
    );
    assert_error(&o, 3, "unknown region \"mars\"");
    let o = run(
        &[
            "call",
            "--regions",
            "/nonexistent/regions.toml",
            "--insecure-dev",
            "where",
        ],
        &dir.0,
    );
    assert_error(&o, 3, "cannot read");
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "[[region]]\nname = 5\n").expect("write");
    let o = run(
        &[
            "call",
            "--regions",
            bad.to_str().expect("path"),
            "--insecure-dev",
            "where",
        ],
        &dir.0,
    );
    assert_error(&o, 3, "bad region file");

    // probe: a table with both servers, one region marked as chosen.
    let o = run(
        &[
            "probe",
            "--regions",
            file,
            "--insecure-dev",
            "--interval",
            "300ms",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("RTT p50") && text.contains("eu-1") && text.contains("us-1"),
        "{text}"
    );
    assert_eq!(text.matches("<-").count(), 1, "{text}");

    // probe --watch --count 2 --json: two refreshes, each with RTT figures.
    let o = run(
        &[
            "probe",
            "--regions",
            file,
            "--insecure-dev",
            "--watch",
            "--count",
            "2",
            "--interval",
            "300ms",
            "--json",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let tables: Vec<serde_json::Value> = stdout(&o).lines().map(json).collect();
    assert_eq!(tables.len(), 2);
    for t in &tables {
        let servers = t["servers"].as_array().expect("servers");
        assert_eq!(servers.len(), 2);
        for s in servers {
            assert_eq!(s["healthy"], true, "{t}");
            assert!(
                s["rtt_min_ms"]
                    .as_f64()
                    .is_some_and(|v| v > 0.0 && v < 1000.0),
                "{t}"
            );
            assert!(s["rtt_p50_ms"].as_f64().is_some(), "{t}");
        }
        let chosen = t["chosen_region"].as_str().expect("chosen");
        assert!(chosen == "eu" || chosen == "us");
        assert_eq!(
            servers.iter().filter(|s| s["chosen"] == true).count(),
            1,
            "{t}"
        );
    }
}

#[test]
fn bench_reports_percentiles_and_status_codes() {
    let dir = Scratch::new("bench");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let addr = server.addr.to_string();
    let o = run(
        &[
            "bench",
            "--connect",
            &addr,
            "--insecure-dev",
            "add",
            "1",
            "2",
            "--calls",
            "200",
            "--concurrency",
            "4",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "Count:        200",
        "Latency histogram",
        "p50",
        "p90",
        "p99.9",
        "[OK] 200 calls",
    ] {
        assert!(text.contains(needle), "{needle} missing: {text}");
    }
    // Not a terminal: no progress bar on stderr.
    assert!(!stderr(&o).contains('\r'), "{}", stderr(&o));

    let o = run(
        &[
            "bench",
            "--connect",
            &addr,
            "--insecure-dev",
            "count",
            "3",
            "-n",
            "30",
            "-c",
            "3",
            "--rate",
            "300",
            "--json",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["count"], 30);
    assert_eq!(v["status_codes"]["OK"], 30);
    // 30 calls at 300/s take about 0.1 s at least.
    assert!(v["total_s"].as_f64().is_some_and(|t| t >= 0.09), "{v}");
    let p50 = v["latency_ms"]["p50"].as_f64().expect("p50");
    let p99 = v["latency_ms"]["p99"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "{v}");

    // Failing calls are counted by status code, and the exit code says so.
    let o = run(
        &[
            "bench",
            "--connect",
            &addr,
            "--insecure-dev",
            "add",
            "[9223372036854775807, 1]",
            "-n",
            "20",
            "-c",
            "2",
            "--json",
        ],
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o))["status_codes"]["OUT_OF_RANGE"], 20);
    assert!(
        stderr(&o).contains("20 of 20 calls failed"),
        "{}",
        stderr(&o)
    );

    // A duration-bounded run stops on time.
    let t = Instant::now();
    let o = run(
        &[
            "bench",
            "--connect",
            &addr,
            "--insecure-dev",
            "echo",
            "--duration",
            "500ms",
            "-c",
            "2",
            "--json",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(json(&stdout(&o))["count"].as_u64().is_some_and(|n| n > 0));
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[cfg(unix)]
#[test]
fn serve_shuts_down_gracefully_on_sigterm() {
    let dir = Scratch::new("sigterm");
    let mut server = Serve::start(&dir.0, "eu", "eu-1");
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let end = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s.code();
        }
        assert!(Instant::now() < end, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    let mut err = String::new();
    if let Some(mut e) = server.child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains("shutting down") && err.contains("stopped"),
        "{err}"
    );
}

#[test]
fn serve_without_identity_is_a_configuration_error() {
    let dir = Scratch::new("noid");
    let o = run(&["serve"], &dir.0);
    assert_error(&o, 3, "--insecure-dev");
}

#[test]
fn proxy_forwards_calls_from_its_config_file() {
    let dir = Scratch::new("proxy");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    // The dev certificate (for localhost) doubles as the proxy's own; the dev CA is trusted
    // for the upstream server.
    let config = dir.path("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nproxy_region = \"edge\"\n\
             [tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nca = \"ca.pem\"\n\
             [[region]]\nname = \"eu\"\nservers = [{{ addr = \"{}\" }}]\n",
            server.addr
        ),
    )
    .expect("proxy config");
    let mut child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian proxy");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: SocketAddr = loop {
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("meridian proxy printed no address");
        if let Some(a) = line.strip_prefix("address: ") {
            break a.parse().expect("address");
        }
    };
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _proxy = Kill(child);
    let target = addr.to_string();
    // A call through the proxy, with the time of each hop.
    let o = run(
        &[
            "call",
            "--connect",
            &target,
            "--insecure-dev",
            "--timing",
            "add",
            "10",
            "5",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "15");
    let err = stderr(&o);
    assert!(
        err.contains("client<->proxy") && err.contains("proxy<->server"),
        "{err}"
    );
    // Directly to the server: network + server.
    let direct = server.addr.to_string();
    let o = run(
        &[
            "call",
            "--connect",
            &direct,
            "--insecure-dev",
            "--timing",
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("= network"), "{}", stderr(&o));
    let o = run(
        &[
            "call",
            "--connect",
            &target,
            "--insecure-dev",
            "where",
            "--json",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("eu-1"), "{}", stdout(&o));
    // A bad configuration is one line and exit code 3.
    std::fs::write(dir.path("bad.toml"), "listen = 5\n").expect("bad config");
    let o = run(
        &[
            "proxy",
            "--config",
            dir.path("bad.toml").to_str().expect("utf-8"),
        ],
        &dir.0,
    );
    assert_error(&o, 3, "proxy configuration");
}

#[cfg(feature = "etcd")]
#[test]
fn servers_register_in_etcd_and_clients_find_them_there() {
    let Some(etcd) = meridian::testing::etcd::EtcdProcess::start_or_skip() else {
        return;
    };
    let url = etcd.endpoint();
    let dir = Scratch::new("etcd");
    let mut child = Command::new(BIN)
        .args(["serve", "--insecure-dev", "--region", "eu", "--id", "eu-1"])
        .args(["--etcd", &url, "--etcd-ttl", "2s"])
        .env("MERIDIAN_DEV_DIR", &dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian serve");
    // Registration happens before the address line is printed.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.starts_with("address: "))));
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Kill(child);

    // `call` with only the etcd address.
    let o = run(
        &["call", "--etcd", &url, "--insecure-dev", "add", "10", "5"],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "15");
    // `probe` lists the registered server.
    let o = run(
        &[
            "probe",
            "--etcd",
            &url,
            "--insecure-dev",
            "--json",
            "--interval",
            "300ms",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = json(&stdout(&o));
    assert!(table.to_string().contains("eu-1"), "{table}");
    // A region file with an [etcd] table works the same.
    let file = dir.path("regions.toml");
    std::fs::write(&file, format!("[etcd]\nendpoints = [\"{url}\"]\n")).expect("region file");
    let o = run(
        &[
            "call",
            "--regions",
            file.to_str().expect("utf-8"),
            "--insecure-dev",
            "where",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("eu-1"), "{}", stdout(&o));

    // Killed without a clean stop: the lease expires, and etcd lists nobody.
    let _ = server.0.kill();
    let _ = server.0.wait();
    std::thread::sleep(Duration::from_secs(4));
    let o = run(
        &["call", "--etcd", &url, "--insecure-dev", "add", "1", "1"],
        &dir.0,
    );
    assert_error(&o, 3, "no server is registered in etcd");

    // An etcd nobody answers at: one line, exit code 4, the cause in words.
    let o = run(
        &[
            "call",
            "--etcd",
            "http://127.0.0.1:9",
            "--insecure-dev",
            "add",
            "1",
            "1",
        ],
        &dir.0,
    );
    assert_error(
        &o,
        4,
        "cannot reach etcd at http://127.0.0.1:9: connection refused; is etcd running?",
    );
}

#[test]
fn demo_quick_fails_over_without_losing_calls() {
    let dir = Scratch::new("demo");
    let o = run(&["demo", "--quick"], &dir.0);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("settled on the nearest region"), "{text}");
    assert!(
        text.contains("only region whose servers' catalogs list it"),
        "{text}"
    );
    assert!(text.contains("outage starts"), "{text}");
    assert!(text.contains("failed calls: 0"), "{text}");
    // The proxy part: both hops reported, and `report` (only in `far`) went through it.
    let proxy_part = text.split("Through a proxy").nth(1).unwrap_or_default();
    assert!(proxy_part.contains("client<->proxy"), "{text}");
    assert!(
        proxy_part
            .lines()
            .any(|l| l.trim_start().starts_with("report") && l.contains("far-1")),
        "{text}"
    );
    // After the outage the calls went to `mid`.
    let after = text.split("outage starts").nth(1).unwrap_or_default();
    let mid_rows = after
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .count();
    assert!(mid_rows > 0, "{text}");
}

/// A `meridian` built without the `etcd` feature (what `cargo install --features cli` and
/// the demo build) refuses etcd flags and `[etcd]` tables with exit code 3 and says how
/// to get a build that has them, rather than ignoring the registry they name.
#[cfg(not(feature = "etcd"))]
#[test]
fn a_build_without_etcd_refuses_etcd_flags_and_tables() {
    let dir = Scratch::new("no-etcd");
    let o = run(
        &[
            "call",
            "--etcd",
            "http://127.0.0.1:1",
            "--insecure-dev",
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert_error(&o, 3, "--features cli,etcd");
    let o = run(
        &["serve", "--insecure-dev", "--etcd", "http://127.0.0.1:1"],
        &dir.0,
    );
    assert_error(&o, 3, "--features cli,etcd");
    let file = dir.path("regions.toml");
    std::fs::write(&file, "[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n").expect("file");
    let o = run(
        &[
            "probe",
            "--regions",
            file.to_str().expect("utf-8"),
            "--insecure-dev",
        ],
        &dir.0,
    );
    assert_error(&o, 3, "[etcd] table");
}

/// A region file that lists a dead server: a routed call goes to the live one as soon as
/// it is connected (plus a short grace), instead of waiting out --connect-timeout for the
/// dead one on every call (it used to take the full timeout, silently).
#[test]
fn a_dead_server_in_the_region_file_does_not_hold_every_call() {
    let dir = Scratch::new("dead-server");
    let live = Serve::start(&dir.0, "eu", "eu-1");
    // A bound UDP socket that never answers: a server that is gone.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let regions = region_file(
        &dir,
        &[("eu", live.addr), ("us", dead.local_addr().expect("addr"))],
    );
    let started = Instant::now();
    let o = run(
        &[
            "call",
            "--regions",
            regions.to_str().expect("path"),
            "--insecure-dev",
            "--connect-timeout",
            "20s",
            "add",
            "2",
            "3",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o)), serde_json::json!(5));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the call waited {:?} for a dead server (connect timeout 20 s)",
        started.elapsed()
    );
}

/// A process killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `meridian proxy --config FILE` and waits for its address.
fn start_proxy(config: &Path) -> (Kill, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian proxy");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let child = Kill(child);
    let addr = loop {
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("meridian proxy printed no address");
        if let Some(a) = line.strip_prefix("address: ") {
            break a.parse().expect("address");
        }
    };
    (child, addr)
}

/// Writes a client identity issued by `ca` as `NAME.pem` and `NAME.key`.
fn client_identity(dir: &Scratch, ca: &meridian::DevCa, name: &str) -> (String, String) {
    use meridian::transport::pem_encode;
    let id = ca.issue_client(name).expect("client certificate");
    let chain: String = id
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    let (cert, key) = (
        dir.path(&format!("{name}.pem")),
        dir.path(&format!("{name}.key")),
    );
    std::fs::write(&cert, chain).expect("write cert");
    std::fs::write(&key, pem_encode("PRIVATE KEY", id.key.secret_der())).expect("write key");
    (
        cert.to_str().expect("utf-8").to_string(),
        key.to_str().expect("utf-8").to_string(),
    )
}

/// A server that requires client certificates (`serve --ca`) refuses a client without
/// one, or with one from another CA: exit code 5, and the message says the client
/// certificate was refused and which flags give one (it used to be `UNAVAILABLE:
/// connection lost: connection lost`, exit 1).
#[test]
fn a_refused_client_certificate_is_untrusted() {
    let dir = Scratch::new("mtls");
    // Certificate files live apart from the dev directory, which `serve` makes itself.
    let files = Scratch::new("mtls-files");
    let clients = meridian::DevCa::new().expect("ca");
    let clients_ca = files.path("clients-ca.pem");
    std::fs::write(&clients_ca, clients.certificate_pem()).expect("write");
    let server = Serve::start_with(
        &dir.0,
        "eu",
        "eu-1",
        &["--ca", clients_ca.to_str().expect("utf-8")],
    );
    let addr = server.addr.to_string();
    let base = ["call", "--connect", addr.as_str(), "--insecure-dev"];

    // A certificate the server's client CA issued: accepted.
    let (cert, key) = client_identity(&files, &clients, "good");
    let o = run(
        &[
            &base[..],
            &["--cert", &cert, "--key", &key, "add", "1", "2"],
        ]
        .concat(),
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o)), serde_json::json!(3));

    // No certificate at all.
    let o = run(&[&base[..], &["add", "1", "2"]].concat(), &dir.0);
    assert_error(&o, 5, "the server refused the client certificate");
    assert!(stderr(&o).contains("--cert"), "{}", stderr(&o));

    // One from another CA.
    let stranger = meridian::DevCa::new().expect("ca");
    let (cert, key) = client_identity(&files, &stranger, "stranger");
    let o = run(
        &[
            &base[..],
            &["--cert", &cert, "--key", &key, "add", "1", "2"],
        ]
        .concat(),
        &dir.0,
    );
    assert_error(&o, 5, "the server refused the client certificate");

    // The same through a region file.
    let regions = region_file(&files, &[("eu", server.addr)]);
    let o = run(
        &[
            "call",
            "--regions",
            regions.to_str().expect("utf-8"),
            "--insecure-dev",
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert_error(&o, 5, "the server refused the client certificate");
}

/// A certificate for other names: the hint points at --server-name, not at --ca.
#[test]
fn a_wrong_server_name_points_at_the_server_name_flag() {
    let dir = Scratch::new("server-name");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let addr = server.addr.to_string();
    let o = run(
        &[
            "call",
            "--connect",
            &addr,
            "--insecure-dev",
            "--server-name",
            "api.example.test",
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert_error(&o, 5, "see --server-name");
    assert!(stderr(&o).contains("not valid for name"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("see --ca"), "{}", stderr(&o));
}

/// A proxy whose upstream CA is wrong: the call through it says why no region serves the
/// method (the last connect error, with server and region) and exits with code 5.
#[test]
fn a_proxy_with_an_untrusted_upstream_says_why() {
    let dir = Scratch::new("proxy-tls");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let other = meridian::DevCa::new().expect("ca");
    std::fs::write(dir.path("other-ca.pem"), other.certificate_pem()).expect("write");
    let config = dir.path("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nproxy_region = \"edge\"\n\
             [tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nca = \"other-ca.pem\"\n\
             [[region]]\nname = \"eu\"\nservers = [{{ addr = \"{}\" }}]\n",
            server.addr
        ),
    )
    .expect("proxy config");
    let (_proxy, addr) = start_proxy(&config);
    let target = addr.to_string();
    let o = run(
        &[
            "call",
            "--connect",
            &target,
            "--insecure-dev",
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert_error(
        &o,
        5,
        &format!("no healthy region serves \"add\" (last connect error from {} in eu: TLS handshake failed", server.addr),
    );
    assert!(stderr(&o).contains("[tls] ca"), "{}", stderr(&o));
}

/// Region files are strict: a misspelt key is an error naming it, with its line and
/// column (`servername` used to be ignored, so `localhost` was used; `[[regions]]` and
/// `server = [...]` used to give "lists no server"). A missing or malformed file is a
/// region-file error.
#[test]
fn region_files_with_unknown_keys_or_bad_syntax_are_errors_with_positions() {
    let dir = Scratch::new("strict-regions");
    let ca = dir.path("ca.pem");
    std::fs::write(&ca, meridian::DevCa::new().expect("ca").certificate_pem()).expect("write");
    let ca = ca.to_str().expect("utf-8");
    let cases = [
        (
            "[[region]]\nname = \"eu\"\nservers = [{ addr = \"127.0.0.1:7000\", servername = \"api.test\" }]\n",
            "line 3, column 39: unknown field `servername`, expected one of `addr`, `server_name`, `cert_sha256`",
        ),
        (
            "[[regions]]\nname = \"eu\"\n",
            "line 1, column 3: unknown field `regions`",
        ),
        (
            "[[region]]\nname = \"eu\"\nserver = [{ addr = \"127.0.0.1:7000\" }]\n",
            "line 3, column 1: unknown field `server`",
        ),
        (
            "[[region]]\nname = \"eu\"\nservers = [{ addr = \"127.0.0.1:7000\" }\n",
            "line 3, column",
        ),
    ];
    for (text, needle) in cases {
        let file = dir.path("regions.toml");
        std::fs::write(&file, text).expect("write");
        let o = run(
            &[
                "call",
                "--regions",
                file.to_str().expect("utf-8"),
                "--ca",
                ca,
                "where",
            ],
            &dir.0,
        );
        assert_error(&o, 3, needle);
        assert!(stderr(&o).contains("bad region file"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("etcd configuration"), "{}", stderr(&o));
    }
    let o = run(
        &[
            "probe",
            "--regions",
            dir.path("missing.toml").to_str().expect("utf-8"),
            "--ca",
            ca,
        ],
        &dir.0,
    );
    assert_error(&o, 3, "cannot read the region file");
    assert!(!stderr(&o).contains("etcd configuration"), "{}", stderr(&o));
}

/// Proxy configurations are strict too: an unknown key in a `[[region]]` entry, and a
/// `home_region` that is not one of its regions, are errors (exit code 3).
#[test]
fn proxy_configurations_with_unknown_keys_or_regions_are_errors() {
    let dir = Scratch::new("strict-proxy");
    let head = "listen = \"127.0.0.1:0\"\n";
    let tls = "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nca = \"ca.pem\"\n";
    let cases = [
        (
            format!("{head}home_region = \"asia\"\n{tls}[[region]]\nname = \"eu\"\nservers = [{{ addr = \"127.0.0.1:7000\" }}]\n"),
            "home_region \"asia\" is not a region of the configuration (its [[region]] tables name eu)",
        ),
        (
            format!("{head}{tls}[[region]]\nname = \"eu\"\nservers = [{{ addr = \"127.0.0.1:7000\", servername = \"x\" }}]\n"),
            "line 8, column 39: unknown field `servername`",
        ),
        (
            format!("{head}hedgee = [\"echo\"]\n{tls}"),
            "line 2, column 1: unknown field `hedgee`",
        ),
    ];
    for (text, needle) in cases {
        let file = dir.path("proxy.toml");
        std::fs::write(&file, text).expect("write");
        let o = run(
            &["proxy", "--config", file.to_str().expect("utf-8")],
            &dir.0,
        );
        assert_error(&o, 3, needle);
    }
}

/// `serve --etcd` with etcd down at start keeps serving and retries the registration
/// (a warning per attempt, naming etcd and the cause), and registers once etcd is back.
#[cfg(feature = "etcd")]
#[test]
fn serve_retries_etcd_registration_while_etcd_is_down() {
    use std::sync::mpsc;
    let Some(mut etcd) = meridian::testing::etcd::EtcdProcess::start_or_skip() else {
        return;
    };
    let url = etcd.endpoint();
    etcd.stop();
    let dir = Scratch::new("etcd-down");
    let mut child = Command::new(BIN)
        .args(["serve", "--insecure-dev", "--region", "eu", "--id", "eu-1"])
        .args(["--etcd", &url, "--etcd-ttl", "2s"])
        .env("MERIDIAN_DEV_DIR", &dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian serve");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut server = Kill(child);
    let (tx, rx) = mpsc::channel::<String>();
    for lines in [
        Box::new(stdout.lines()) as Box<dyn Iterator<Item = std::io::Result<String>> + Send>,
        Box::new(stderr.lines()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    // Waits (bounded) for a line containing `needle`; returns every line seen.
    let wait_for = |needle: &str, seen: &mut Vec<String>| {
        if seen.iter().any(|l| l.contains(needle)) {
            return;
        }
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return;
                }
            }
        }
        panic!("no line with {needle:?} within 20 s: {seen:#?}");
    };
    let mut seen = Vec::new();
    wait_for("address: ", &mut seen);
    wait_for("retrying in 1 s", &mut seen);
    let warning = seen
        .iter()
        .find(|l| l.contains("warning"))
        .expect("warning");
    assert!(
        warning.contains(&format!("cannot reach etcd at {url}: connection refused")),
        "{warning}"
    );
    // A second failed attempt, with a longer pause.
    wait_for("retrying in 2 s", &mut seen);
    assert!(
        server.0.try_wait().expect("wait").is_none(),
        "serve exited: {seen:#?}"
    );

    etcd.restart().expect("etcd restart");
    wait_for("registered in etcd under", &mut seen);
    let o = run(
        &["call", "--etcd", &url, "--insecure-dev", "where", "--json"],
        &dir.0,
    );
    assert!(o.status.success(), "{}", self::stderr(&o));
    assert_eq!(json(&self::stdout(&o))["server"], "eu-1");
}

/// Runs the binary with `input` on its stdin (bounded like [`run`]).
fn run_with_stdin(args: &[&str], dev_dir: &Path, input: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(args)
        .env("MERIDIAN_DEV_DIR", dev_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    finish(child, args)
}

/// A routed call says which server and region answered (in --timing, as text or as JSON
/// with --json); --home-region decides the region; an unknown one is a configuration
/// error; --hedge warns about methods that can never be hedged.
#[test]
fn routed_calls_report_who_answered_and_take_routing_flags() {
    let dir = Scratch::new("routing-flags");
    let eu = Serve::start(&dir.0, "eu", "eu-1");
    let us = Serve::start(&dir.0, "us", "us-1");
    let regions = region_file(&dir, &[("eu", eu.addr), ("us", us.addr)]);
    let file = regions.to_str().expect("utf-8");
    let base = ["call", "--regions", file, "--insecure-dev"];
    for (home, id, addr) in [("eu", "eu-1", eu.addr), ("us", "us-1", us.addr)] {
        let o = run(
            &[
                &base[..],
                &["--home-region", home, "--timing", "add", "1", "2"],
            ]
            .concat(),
            &dir.0,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), "3");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("served by {id} in {home} ({addr})")),
            "{err}"
        );
        let o = run(
            &[
                &base[..],
                &["--home-region", home, "--timing", "--json", "add", "1", "2"],
            ]
            .concat(),
            &dir.0,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let timing = json(&stderr(&o));
        assert_eq!(timing["served_by"]["server_id"], id, "{timing}");
        assert_eq!(timing["served_by"]["region"], home, "{timing}");
        assert_eq!(timing["served_by"]["address"], addr.to_string(), "{timing}");
        assert!(
            timing["total_ms"].as_f64().is_some_and(|t| t > 0.0),
            "{timing}"
        );
        assert!(timing["network_ms"].as_f64().is_some(), "{timing}");
    }
    let o = run(
        &[&base[..], &["--home-region", "mars", "add", "1", "2"]].concat(),
        &dir.0,
    );
    assert_error(
        &o,
        3,
        "--home-region \"mars\" is not a known region (known: eu, us)",
    );
    // --hedge: an idempotent method is fine; a method nobody serves and a method that is
    // not idempotent are named in warnings, and the call still works.
    let o = run(
        &[
            &base[..],
            &[
                "--hedge", "add", "--hedge", "nosuch", "--hedge", "sleep", "add", "1", "2",
            ],
        ]
        .concat(),
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "3");
    let err = stderr(&o);
    assert!(
        err.contains("\"nosuch\" is served by no connected server"),
        "{err}"
    );
    assert!(err.contains("\"sleep\" is not idempotent"), "{err}");
    assert!(!err.contains("\"add\""), "{err}");
    // --home-region and friends need routing.
    let direct = eu.addr.to_string();
    let o = run(
        &[
            "call",
            "--connect",
            &direct,
            "--insecure-dev",
            "--home-region",
            "eu",
            "where",
        ],
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// `bench` through a region file breaks results down by region and server.
#[test]
fn bench_breaks_results_down_by_region_and_server() {
    let dir = Scratch::new("bench-by-server");
    let eu = Serve::start(&dir.0, "eu", "eu-1");
    let us = Serve::start(&dir.0, "us", "us-1");
    let regions = region_file(&dir, &[("eu", eu.addr), ("us", us.addr)]);
    let file = regions.to_str().expect("utf-8");
    let o = run(
        &[
            "bench",
            "--regions",
            file,
            "--insecure-dev",
            "--home-region",
            "us",
            "add",
            "1",
            "2",
            "-n",
            "60",
            "-c",
            "3",
            "--json",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(&stdout(&o));
    let rows = report["by_server"].as_array().expect("by_server");
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["region"], "us", "{report}");
    assert_eq!(rows[0]["server_id"], "us-1", "{report}");
    assert_eq!(rows[0]["address"], us.addr.to_string(), "{report}");
    assert_eq!(rows[0]["count"], 60, "{report}");
    let (p50, p99) = (rows[0]["p50_ms"].as_f64(), rows[0]["p99_ms"].as_f64());
    assert!(p50.is_some_and(|p| p > 0.0) && p99 >= p50, "{report}");
    // The text report has the table too.
    let o = run(
        &[
            "bench",
            "--regions",
            file,
            "--insecure-dev",
            "--home-region",
            "eu",
            "add",
            "1",
            "2",
            "-n",
            "20",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let table = text
        .split("By region and server")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    let row = table
        .lines()
        .find(|l| l.contains("eu-1"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains(&eu.addr.to_string()) && row.contains(" 20 "),
        "{row}"
    );
}

/// The request can come from a file (`@FILE`) or stdin (`-`), beyond the kernel's limit
/// on the size of arguments; integers beyond i64 are refused, as the help says.
#[test]
fn the_request_comes_from_a_file_or_stdin() {
    let dir = Scratch::new("body");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let addr = server.addr.to_string();
    let base = [
        "call",
        "--connect",
        addr.as_str(),
        "--insecure-dev",
        "--json",
    ];
    // 300 KiB: more than one argument may hold (128 KiB on Linux).
    let big = "x".repeat(300 * 1024);
    let body = serde_json::json!({ "big": big }).to_string();
    let file = dir.path("request.json");
    std::fs::write(&file, &body).expect("write");
    let at = format!("@{}", file.display());
    let o = run(&[&base[..], &["echo", &at]].concat(), &dir.0);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        json(&stdout(&o))["big"].as_str().map(str::len),
        Some(big.len())
    );

    let o = run_with_stdin(&[&base[..], &["add", "-"]].concat(), &dir.0, b"[40, 2]\n");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o)), serde_json::json!(42));

    let o = run_with_stdin(&[&base[..], &["add", "-"]].concat(), &dir.0, b"[40, ");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the request on stdin"),
        "{}",
        stderr(&o)
    );
    let missing = format!("@{}", dir.path("missing.json").display());
    let o = run(&[&base[..][..4], &["echo", &missing]].concat(), &dir.0);
    assert_error(&o, 2, "cannot read the request file");

    let o = run(
        &[&base[..][..4], &["echo", "18446744073709551615"]].concat(),
        &dir.0,
    );
    assert_error(&o, 2, "bad JSON argument");
    let help = stdout(&run(&["call", "--help"], &dir.0));
    assert!(
        help.contains("a\nlarger integer is refused") || help.contains("larger integer is refused"),
        "{help}"
    );
}

/// Under --json, failures are one JSON object on stderr, with the status code, the
/// message and the exit code.
#[test]
fn errors_are_json_under_json() {
    let dir = Scratch::new("json-errors");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let addr = server.addr.to_string();
    let o = run(
        &[
            "call",
            "--connect",
            &addr,
            "--insecure-dev",
            "--json",
            "sleep",
            "2000",
            "--timeout",
            "100ms",
        ],
        &dir.0,
    );
    assert_eq!(o.status.code(), Some(1));
    let e = json(&stderr(&o));
    assert_eq!(e["error"]["code"], "DEADLINE_EXCEEDED", "{e}");
    assert_eq!(e["error"]["message"], "deadline exceeded", "{e}");
    assert_eq!(e["error"]["exit"], 1, "{e}");
    // Not a call status: the code is null, the exit code still the documented one.
    let o = run(&["call", "--connect", &addr, "--json", "echo", "1"], &dir.0);
    assert_eq!(o.status.code(), Some(3));
    let e = json(&stderr(&o));
    assert_eq!(e["error"]["code"], serde_json::Value::Null, "{e}");
    assert_eq!(e["error"]["exit"], 3, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--insecure-dev")),
        "{e}"
    );
}

/// --via-proxies: a region that lists proxies is reached through them (here its only
/// server cannot be reached directly), and --timing shows the proxy hop.
#[test]
fn via_proxies_reaches_a_region_through_its_proxy() {
    let dir = Scratch::new("via-proxies");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let config = dir.path("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nproxy_region = \"edge\"\n\
             [tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nca = \"ca.pem\"\n\
             [[region]]\nname = \"eu\"\nservers = [{{ addr = \"{}\" }}]\n",
            server.addr
        ),
    )
    .expect("proxy config");
    let (_proxy, proxy_addr) = start_proxy(&config);
    // The region's server as the client sees it: an address nobody answers at.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let file = dir.path("regions.toml");
    std::fs::write(
        &file,
        format!(
            "[[region]]\nname = \"eu\"\nservers = [{{ addr = \"{}\" }}]\nproxies = [{{ addr = \"{proxy_addr}\" }}]\n",
            silent.local_addr().expect("addr")
        ),
    )
    .expect("region file");
    let file = file.to_str().expect("utf-8");
    let o = run(
        &[
            "call",
            "--regions",
            file,
            "--insecure-dev",
            "--via-proxies",
            "--timing",
            "where",
            "--json",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o))["server"], "eu-1");
    let timing = json(&stderr(&o));
    assert!(timing["proxy_ms"].as_f64().is_some(), "{timing}");
    assert_eq!(
        timing["served_by"]["address"],
        proxy_addr.to_string(),
        "{timing}"
    );
    // Without it, the server itself is dialled, and does not answer.
    let o = run(
        &[
            "call",
            "--regions",
            file,
            "--insecure-dev",
            "--connect-timeout",
            "500ms",
            "where",
        ],
        &dir.0,
    );
    assert_error(&o, 4, "cannot reach");
}

/// Starts `meridian serve ARGS` and waits for its address.
fn start_serve(args: &[&str], dev_dir: &Path) -> (Kill, SocketAddr) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("MERIDIAN_DEV_DIR", dev_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meridian serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let child = Kill(child);
    let addr = loop {
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("meridian serve printed no address");
        if let Some(a) = line.strip_prefix("address: ") {
            break a.parse().expect("address");
        }
    };
    (child, addr)
}

/// The name checked is the host dialled (as gRPC takes it from the target): a real
/// certificate for `api.test` and the IP 127.0.0.1 verifies for `--connect
/// 127.0.0.1:PORT` and for a region file entry without `server_name`, with no
/// --server-name (it used to be checked against `localhost` and fail with exit 5). Dialled
/// as `localhost:PORT` the name is `localhost`, which the certificate lacks: the hint then
/// points at the name, not at --ca.
#[test]
fn the_server_name_defaults_to_the_host_dialled() {
    use meridian::transport::pem_encode;
    let dir = Scratch::new("name-default");
    let ca = meridian::DevCa::new().expect("ca");
    let id = ca.issue_server(&["api.test", "127.0.0.1"]).expect("cert");
    let chain: String = id
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    let (cert, key, ca_file) = (dir.path("api.pem"), dir.path("api.key"), dir.path("ca.pem"));
    std::fs::write(&cert, chain).expect("write cert");
    std::fs::write(&key, pem_encode("PRIVATE KEY", id.key.secret_der())).expect("write key");
    std::fs::write(&ca_file, ca.certificate_pem()).expect("write ca");
    let s = |p: &PathBuf| p.to_str().expect("utf-8").to_string();
    let (_server, addr) = start_serve(
        &[
            "--cert",
            &s(&cert),
            "--key",
            &s(&key),
            "--region",
            "eu",
            "--id",
            "eu-1",
        ],
        &dir.0,
    );
    let direct = addr.to_string();
    let o = run(
        &[
            "call",
            "--connect",
            &direct,
            "--ca",
            &s(&ca_file),
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "3");

    let regions = region_file(&dir, &[("eu", addr)]);
    let o = run(
        &[
            "call",
            "--regions",
            &s(&regions),
            "--ca",
            &s(&ca_file),
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "3");

    let by_name = format!("localhost:{}", addr.port());
    let o = run(
        &[
            "call",
            "--connect",
            &by_name,
            "--ca",
            &s(&ca_file),
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert_error(&o, 5, "not valid for name");
    assert!(stderr(&o).contains("--server-name"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("see --ca"), "{}", stderr(&o));
}

/// Host names are accepted wherever an address is: `serve --listen localhost:0` binds
/// where localhost resolves, and a region file entry `addr = "localhost:PORT"` is
/// resolved when dialled (it used to be "invalid socket address syntax" both times). A
/// host that does not resolve, or an address without a port, is an error that says so.
#[test]
fn host_names_in_listen_addresses_and_region_files() {
    let dir = Scratch::new("host-names");
    let (_server, addr) = start_serve(
        &[
            "--insecure-dev",
            "--listen",
            "localhost:0",
            "--region",
            "eu",
            "--id",
            "eu-1",
        ],
        &dir.0,
    );
    assert!(addr.ip().is_loopback(), "{addr}");
    let regions = dir.path("regions.toml");
    std::fs::write(
        &regions,
        format!(
            "[[region]]\nname = \"eu\"\nservers = [{{ addr = \"localhost:{}\" }}]\n",
            addr.port()
        ),
    )
    .expect("region file");
    let file = regions.to_str().expect("utf-8");
    let o = run(
        &["call", "--regions", file, "--insecure-dev", "add", "1", "2"],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "3");
    let o = run(
        &["probe", "--regions", file, "--insecure-dev", "--json"],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report = json(stdout(&o).trim());
    let rows = report["servers"].as_array().expect("servers").clone();
    assert_eq!(
        rows[0]["address"],
        format!("localhost:{}", addr.port()),
        "{report}"
    );

    let o = run(
        &[
            "serve",
            "--insecure-dev",
            "--listen",
            "no-such-host.invalid:0",
        ],
        &dir.0,
    );
    assert_error(&o, 3, "no-such-host.invalid");
    let o = run(
        &["serve", "--insecure-dev", "--listen", "localhost"],
        &dir.0,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no port"), "{}", stderr(&o));
}

/// `--pin-cert-sha256`: a region file entry whose `cert_sha256` is not the certificate the
/// server presents is refused with exit 5 and a message naming the mismatch; the right
/// hash (as `serve` prints it) works.
#[test]
fn pinned_region_files_refuse_a_server_whose_hash_does_not_match() {
    let dir = Scratch::new("pin");
    let server = Serve::start(&dir.0, "eu", "eu-1");
    let write = |hash: &str| {
        let path = dir.path("regions.toml");
        std::fs::write(
            &path,
            format!(
                "[[region]]\nname = \"eu\"\nservers = [{{ addr = \"{}\", cert_sha256 = \"{hash}\" }}]\n",
                server.addr
            ),
        )
        .expect("region file");
        path.to_str().expect("utf-8").to_string()
    };
    let good = write(&server.fingerprint);
    let o = run(
        &[
            "call",
            "--regions",
            &good,
            "--insecure-dev",
            "--pin-cert-sha256",
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = write(&format!("sha256:{}", "00".repeat(32)));
    let o = run(
        &[
            "call",
            "--regions",
            &bad,
            "--insecure-dev",
            "--pin-cert-sha256",
            "--connect-timeout",
            "1s",
            "add",
            "1",
            "2",
        ],
        &dir.0,
    );
    assert_error(&o, 5, "certificate SHA-256 mismatch");
    // Without the flag the hash is not looked at.
    let o = run(
        &["call", "--regions", &bad, "--insecure-dev", "add", "1", "2"],
        &dir.0,
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
