//! End-to-end: `telemd` posts over HTTPS to a collector that demands a
//! client certificate (mutual TLS), and through a proxy, named in the
//! config or in the environment. The HTTPS collector is Python's `ssl`
//! module (OpenSSL), not the TLS stack telemd uses; the certificates are
//! made by the `openssl` command for each test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::collector::{Collector, Mode};
use support::*;

/// A throwaway certificate authority, a server certificate for 127.0.0.1
/// and a client certificate, all signed by the authority.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (the test command installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                text(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=telemd test CA",
        ]);
        openssl(&ca);
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "telemd-test-client",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subj = format!("/CN={cn}");
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&req);
            let extfile = format!("{name}.ext");
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ]);
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Python's HTTPS server, demanding a client certificate from the test CA
/// and TLS 1.2 at least; every POST it answers is one line of its stdout:
/// the client certificate's common name and the body's length.
const HTTPS_COLLECTOR: &str = r#"
import http.server, ssl, sys
cert, key, ca = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_REQUIRED
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        subject = dict(x[0] for x in self.connection.getpeercert()["subject"])
        print("POST", self.path, subject["commonName"], len(body), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The running HTTPS collector and the lines it printed.
struct HttpsCollector {
    _child: KillOnDrop,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl HttpsCollector {
    fn start(certs: &Certs) -> HttpsCollector {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(HTTPS_COLLECTOR)
            .arg(certs.path("server.pem"))
            .arg(certs.path("server.key"))
            .arg(certs.path("ca.pem"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = out.next().unwrap().unwrap().trim().parse().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        HttpsCollector {
            _child: KillOnDrop(child),
            port,
            lines,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/v2/collector", self.port)
    }

    /// Every line printed so far, waiting up to `limit` for `n` of them.
    fn posts(&self, n: usize, limit: Duration) -> Vec<String> {
        let end = std::time::Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < n {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => break,
            }
        }
        got
    }
}

fn send_records(d: &TestDaemon, n: usize) {
    for i in 0..n {
        send_raw(
            &d.socket(),
            &telem_core::record::wire::encode_frame(&test_record(&format!("tls {i}"))),
        );
    }
}

fn tls_config(c: &HttpsCollector, certs: &Certs, identity: bool) -> String {
    let mut s = format!(
        "server = \"{}\"\ncainfo = \"{}\"\n",
        c.url(),
        certs.path("ca.pem").display()
    );
    if identity {
        s += &format!(
            "tls_client_cert = \"{}\"\ntls_client_key = \"{}\"\n",
            certs.path("client.pem").display(),
            certs.path("client.key").display()
        );
    }
    s
}

#[test]
fn records_reach_a_collector_that_demands_a_client_certificate() {
    let certs = Certs::make();
    let c = HttpsCollector::start(&certs);
    let d = TestDaemon::start(&tls_config(&c, &certs, true));
    send_records(&d, 3);
    let posts = c.posts(3, Duration::from_secs(20));
    assert_eq!(
        posts.len(),
        3,
        "posts {posts:?}; log:\n{}",
        tail(&d.log(), 40)
    );
    for p in &posts {
        assert!(
            p.starts_with("POST /v2/collector telemd-test-client "),
            "{p}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || d.spool_names().is_empty()),
        "{:?}",
        d.spool_names()
    );
}

#[test]
fn without_the_client_certificate_nothing_is_delivered_and_nothing_is_lost() {
    let certs = Certs::make();
    let c = HttpsCollector::start(&certs);
    let d = TestDaemon::start(&tls_config(&c, &certs, false));
    send_records(&d, 2);
    assert_eq!(d.wait_spool(2).len(), 2);
    // The collector closes every handshake without a certificate: no post
    // reaches it, and the records wait in the spool.
    assert!(wait_until(Duration::from_secs(20), || d
        .log()
        .contains("delivery failed")));
    assert_eq!(c.posts(1, Duration::from_secs(2)), Vec::<String>::new());
    assert_eq!(d.spool_names().len(), 2, "{}", tail(&d.log(), 40));
}

#[test]
fn half_a_client_identity_is_refused_at_start_with_what_to_set() {
    let certs = Certs::make();
    let d = TestDaemon::prepare(&format!(
        "server = \"https://127.0.0.1:9/\"\ntls_client_cert = \"{}\"\n",
        certs.path("client.pem").display()
    ));
    let out = Command::new(telemd_binary())
        .arg("-f")
        .arg(&d.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("tls_client_cert and tls_client_key go together"),
        "{err}"
    );
}

#[test]
fn a_key_that_is_not_the_certificates_pem_is_refused_at_start() {
    let certs = Certs::make();
    let bad = certs.path("not-a-key.pem");
    std::fs::write(&bad, "not PEM at all\n").unwrap();
    let d = TestDaemon::prepare(&format!(
        "server = \"https://127.0.0.1:9/\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"\n",
        certs.path("client.pem").display(),
        bad.display()
    ));
    let out = Command::new(telemd_binary())
        .arg("-f")
        .arg(&d.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("are not a PEM certificate and its key"),
        "{err}"
    );
}

/// A plain HTTP post through a proxy goes to the proxy, with the
/// collector's whole URL as its target (RFC 9112, absolute form): the test
/// collector stands in for the proxy, the collector's host does not exist.
#[test]
fn the_configured_proxy_carries_every_post() {
    let proxy = Collector::start(Mode::Status(200, None));
    let d = TestDaemon::start(&format!(
        "server = \"http://collector.invalid/v2/collector\"\nproxy = \"http://127.0.0.1:{}\"\n",
        proxy.port
    ));
    send_records(&d, 2);
    assert!(
        wait_until(Duration::from_secs(20), || proxy.accepted_count() == 2),
        "{}",
        tail(&d.log(), 40)
    );
    for r in proxy.accepted() {
        assert_eq!(
            r.request_line,
            "POST http://collector.invalid/v2/collector HTTP/1.1"
        );
    }
}

/// Without `proxy`, the environment's `HTTP_PROXY` is used, except for the
/// hosts `NO_PROXY` names.
#[test]
fn the_environments_proxy_is_used_unless_no_proxy_names_the_host() {
    let proxy = Collector::start(Mode::Status(200, None));
    let via_env = |no_proxy: &str| {
        let mut d = TestDaemon::prepare("server = \"http://collector.invalid/v2/collector\"\n");
        std::fs::write(d.path("opt-in"), "").unwrap();
        let mut cmd = Command::new(telemd_binary());
        for v in PROXY_VARIABLES {
            cmd.env_remove(v);
        }
        cmd.env("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port))
            .env("NO_PROXY", no_proxy);
        d.spawn_with(cmd);
        d
    };
    let d = via_env("");
    send_records(&d, 1);
    assert!(
        wait_until(Duration::from_secs(20), || proxy.accepted_count() == 1),
        "{}",
        tail(&d.log(), 40)
    );
    drop(d);

    let d = via_env("collector.invalid");
    send_records(&d, 1);
    assert_eq!(d.wait_spool(1).len(), 1);
    // Straight to a host that does not exist: the post fails, the proxy
    // never sees it, the record waits.
    assert!(wait_until(Duration::from_secs(20), || d
        .log()
        .contains("delivery failed")));
    assert_eq!(proxy.accepted_count(), 1);
    assert_eq!(d.spool_names().len(), 1);
}

fn telemd_binary() -> &'static Path {
    Path::new(TELEMD)
}

/// A proxy that wants credentials answers 407: the records are the
/// proxy's business, not the collector's; they stay, and its password
/// never reaches the log.
#[test]
fn a_proxy_asking_for_credentials_keeps_the_records() {
    let proxy = Collector::start(Mode::Status(407, None));
    let d = TestDaemon::start(&format!(
        "server = \"http://collector.invalid/v2/collector\"\nproxy = \"http://user:s3cret@127.0.0.1:{}\"\n",
        proxy.port
    ));
    send_records(&d, 2);
    assert!(
        wait_until(Duration::from_secs(20), || d.log().contains("HTTP 407")),
        "{}",
        tail(&d.log(), 30)
    );
    assert_eq!(d.spool_names().len(), 2);
    assert!(!d.log().contains("s3cret"), "{}", d.log());
    let bad = TestDaemon::prepare("proxy = \"http://user:s3cret@[not a host\"\n");
    let out = Command::new(telemd_binary())
        .arg("-f")
        .arg(&bad.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !text(&out.stderr).contains("s3cret"),
        "{}",
        text(&out.stderr)
    );
}
