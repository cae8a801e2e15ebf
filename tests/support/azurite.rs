//! Test support for the blob store: a real Azurite (the one `scripts/services.sh` started,
//! or a test's own), and a small blocking Blob client that signs with SharedKey, to play
//! the user (uploading, editing and deleting manifest blobs) and a concurrent writer.
#![allow(dead_code)]

use serde_json::Value;
use skiff::store::blob::sharedkey::{RequestParts, SharedKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The connection string the controllers get, as for any Azurite.
pub fn connection_string(endpoint: &str) -> String {
    format!("DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint}/{ACCOUNT};")
}

/// The Azurite `scripts/services.sh` started (`SKIFF_TEST_AZURITE`). Without one, a test
/// fails when `SKIFF_REQUIRE_SERVICES=1` (CI sets it) and otherwise says loudly that it
/// did not run.
pub fn azurite_or_skip(test: &str) -> Option<String> {
    let endpoint = std::env::var("SKIFF_TEST_AZURITE").ok().filter(|v| !v.is_empty());
    if let Some(endpoint) = &endpoint
        && answers(endpoint)
    {
        return Some(endpoint.trim_end_matches('/').to_string());
    }
    let why = "no Azurite; run `source scripts/services.sh && ensure_azurite` (it exports SKIFF_TEST_AZURITE)";
    if std::env::var("SKIFF_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

fn answers(endpoint: &str) -> bool {
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    address
        .parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some()
}

/// The azurite-blob binary that `ensure_azurite` installed.
pub fn azurite_bin() -> PathBuf {
    std::env::var_os("SKIFF_AZURITE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/skiff/azurite/node_modules/.bin/azurite-blob")
        })
}

/// A test's own Azurite, persisting to disk (`--location`), that it can stop and start.
pub struct OwnAzurite {
    pub port: u16,
    location: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl OwnAzurite {
    pub fn start(location: &Path, log: &Path) -> Self {
        let mut own = OwnAzurite {
            port: crate::support::free_port(),
            location: location.to_path_buf(),
            log: log.to_path_buf(),
            child: None,
        };
        own.resume();
        own
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and folder.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(&self.location)
            .args(["--skipApiVersionCheck", "--disableTelemetry"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", azurite_bin().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(&self.endpoint()) {
            assert!(Instant::now() < deadline, "azurite did not answer on {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it the way a service stops (SIGTERM: it saves its data), and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnAzurite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A container in an Azurite, seen through a small SharedKey client.
pub struct Container {
    pub endpoint: String,
    pub name: String,
    http: reqwest::blocking::Client,
    key: SharedKey,
}

/// A container name no other test uses.
pub fn unique_container(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

pub struct Answer {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Container {
    /// Makes the container (if need be).
    pub fn create(endpoint: &str, name: &str) -> Self {
        let container = Container {
            endpoint: endpoint.to_string(),
            name: name.to_string(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                // Azurite closes idle connections after 5 s.
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
            key: SharedKey::new(ACCOUNT, KEY).unwrap(),
        };
        let answer = container.request("PUT", "", &[("restype", "container")], Vec::new(), &[]);
        assert!(
            matches!(answer.status, 201 | 409),
            "create container: {}",
            answer.status
        );
        container
    }

    /// The `--blob` URL of the container.
    pub fn url(&self) -> String {
        format!("{}/{ACCOUNT}/{}", self.endpoint, self.name)
    }

    pub fn request(
        &self,
        method: &str,
        blob: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> Answer {
        self.try_request(method, blob, query, body, extra)
            .unwrap_or_else(|err| panic!("{method} {blob}: {err}"))
    }

    pub fn try_request(
        &self,
        method: &str,
        blob: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
        extra: &[(&str, &str)],
    ) -> reqwest::Result<Answer> {
        let mut path = format!("/{ACCOUNT}/{}", self.name);
        if !blob.is_empty() {
            for part in blob.split('/') {
                path.push('/');
                path.push_str(&urlencoding::encode(part));
            }
        }
        let mut headers = BTreeMap::from([
            (
                "x-ms-date".to_string(),
                chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            ),
            ("x-ms-version".to_string(), "2021-08-06".to_string()),
        ]);
        for (name, value) in extra {
            headers.insert(name.to_ascii_lowercase(), value.to_string());
        }
        let parts = RequestParts {
            method,
            headers: &headers,
            content_length: body.len() as u64,
            path: &path,
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let authorization = self.key.authorization(&parts);
        let mut url = format!("{}{path}", self.endpoint);
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
                .collect();
            url.push('?');
            url.push_str(&q.join("&"));
        }
        // A busy emulator may drop a connection: each of these requests may be sent again.
        let send = || {
            let mut request = self
                .http
                .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url.clone())
                .header("authorization", authorization.clone())
                .body(body.clone());
            for (name, value) in &headers {
                request = request.header(name.as_str(), value.as_str());
            }
            request.send()
        };
        let response = send().or_else(|_| {
            std::thread::sleep(Duration::from_millis(200));
            send()
        })?;
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Answer {
            status,
            etag,
            body: response.bytes().map(|b| b.to_vec()).unwrap_or_default(),
        })
    }

    pub fn put(&self, blob: &str, text: &str) -> String {
        let answer = self.request(
            "PUT",
            blob,
            &[],
            text.as_bytes().to_vec(),
            &[("x-ms-blob-type", "BlockBlob")],
        );
        assert_eq!(
            answer.status,
            201,
            "put {blob}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        answer.etag.unwrap_or_default()
    }

    /// A conditional put, as a concurrent writer makes one: the answer's status.
    pub fn put_if_match(&self, blob: &str, text: &str, etag: &str) -> u16 {
        self.request(
            "PUT",
            blob,
            &[],
            text.as_bytes().to_vec(),
            &[("x-ms-blob-type", "BlockBlob"), ("if-match", etag)],
        )
        .status
    }

    pub fn get(&self, blob: &str) -> Option<(Vec<u8>, String)> {
        let answer = self.request("GET", blob, &[], Vec::new(), &[]);
        match answer.status {
            200 => Some((answer.body, answer.etag.unwrap_or_default())),
            404 => None,
            other => panic!("get {blob}: {other}"),
        }
    }

    pub fn delete(&self, blob: &str) {
        let answer = self.request("DELETE", blob, &[], Vec::new(), &[]);
        assert!(matches!(answer.status, 202 | 404), "delete {blob}: {}", answer.status);
    }

    /// Every blob's name.
    pub fn list(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let mut query = vec![("restype", "container"), ("comp", "list")];
            if !marker.is_empty() {
                query.push(("marker", marker.as_str()));
            }
            let answer = self.request("GET", "", &query, Vec::new(), &[]);
            assert_eq!(answer.status, 200, "list");
            let text = String::from_utf8_lossy(&answer.body).to_string();
            for part in text.split("<Name>").skip(1) {
                if let Some((name, _)) = part.split_once("</Name>") {
                    names.push(name.to_string());
                }
            }
            marker = text
                .split_once("<NextMarker>")
                .and_then(|(_, rest)| rest.split_once("</NextMarker>"))
                .map(|(m, _)| m.to_string())
                .unwrap_or_default();
            if marker.is_empty() {
                return names;
            }
        }
    }

    /// A manifest that runs `script` with sh, on the process runtime.
    pub fn task(&self, rel: &str, script: &str, extra: &str) {
        let script = script.replace('\'', "''");
        self.put(
            rel,
            &format!("apiVersion: skiff/v1\nkind: ContainerTask\nspec:\n  command: [sh, -c, '{script}']\n{extra}"),
        );
    }

    pub fn status(&self, task: &str) -> Option<Value> {
        let (bytes, _) = self.get(&format!("{task}.status.json"))?;
        Some(serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{task}: status does not parse: {err}")))
    }

    pub fn phase(&self, task: &str) -> Option<String> {
        self.status(task).and_then(|s| s["phase"].as_str().map(str::to_string))
    }

    /// Phases of every task with a status, by task.
    pub fn phases(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for name in self.list() {
            if let Some(task) = name.strip_suffix(".status.json")
                && let Some(phase) = self.phase(task)
            {
                out.insert(task.to_string(), phase);
            }
        }
        out
    }
}

impl Drop for Container {
    // A long-lived Azurite (a developer's) slows down as test containers pile up in it.
    fn drop(&mut self) {
        let _ = self.try_request("DELETE", "", &[("restype", "container")], Vec::new(), &[]);
    }
}

/// Starts `skiff controller --blob <container>` with extra flags, its output in `log`.
pub fn blob_controller(container: &Container, state: &Path, log: &Path, flags: &[&str]) -> crate::support::Controller {
    blob_controller_env(container, state, log, flags, &[])
}

/// [`blob_controller`] with extra environment.
pub fn blob_controller_env(
    container: &Container,
    state: &Path,
    log: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
) -> crate::support::Controller {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(crate::support::SKIFF)
        .arg("controller")
        .arg("--blob")
        .arg(container.url())
        .arg("--blob-poll")
        .arg("200ms")
        .arg("--state-dir")
        .arg(state)
        .args(flags)
        .env("SKIFF_LOG", "debug")
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            connection_string(&container.endpoint),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start skiff controller");
    crate::support::Controller { child }
}

/// Runs `skiff <args> --blob <container>` to completion.
pub fn skiff_blob(container: &Container, args: &[&str]) -> std::process::Output {
    Command::new(crate::support::SKIFF)
        .args(args)
        .arg("--blob")
        .arg(container.url())
        .env(
            "AZURE_STORAGE_CONNECTION_STRING",
            connection_string(&container.endpoint),
        )
        .output()
        .expect("run skiff")
}

/// Waits until `check` holds, checking every 250 ms, or panics with `what` and the log.
pub fn wait_for(timeout: Duration, what: &str, log: &Path, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    panic!(
        "timed out after {timeout:?} waiting for {what}\nlog tail:\n{}",
        tail.join("\n")
    );
}

/// A loopback proxy in front of Azurite that can turn busy: while busy, every request
/// is answered `503 ServerBusy` (as Blob Storage answers when throttling), and the
/// connections already open are cut, so that clients must come through it again.
pub struct BusyProxy {
    pub port: u16,
    busy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl BusyProxy {
    pub fn start(upstream: &str) -> Self {
        use std::sync::atomic::Ordering;
        let upstream: std::net::SocketAddr = upstream.trim_start_matches("http://").parse().expect("an ip:port");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (busy2, open2) = (busy.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if busy2.load(Ordering::SeqCst) {
                    std::thread::spawn(move || answer_busy(client));
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                open2.lock().unwrap().extend([client, server]);
                for (mut from, mut to) in pipes {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        BusyProxy { port, busy, open }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_busy(&self, on: bool) {
        self.busy.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Reads one request (head and body) and answers 503 ServerBusy.
fn answer_busy(mut client: std::net::TcpStream) {
    use std::io::{Read, Write};
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = client.read_exact(&mut body);
    let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ServerBusy</Code><Message>The server is busy.</Message></Error>";
    let _ = write!(
        client,
        "HTTP/1.1 503 The server is busy.\r\nContent-Type: application/xml\r\nx-ms-error-code: ServerBusy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    );
}
