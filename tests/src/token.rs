//! A bearer-token server for docker-registry's `token` auth, as Docker Hub
//! and most private registries run one: the client gets a 401 naming this
//! realm, asks here with its username and password, and gets back a JWT
//! (ES256, signed with a key whose self-signed certificate the registry
//! trusts) granting the scopes it asked for. Wrong or missing credentials
//! get 401.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

pub const ISSUER: &str = "berth-test-issuer";
pub const SERVICE: &str = "berth-test-registry";

/// Serves on a thread of its own: tests block their runtime while the
/// agent (another process) asks for tokens.
#[derive(Debug)]
pub struct TokenServer {
    pub realm: String,
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    basic: String,
}

impl TokenServer {
    /// Makes a key and certificate in `dir` (the registry trusts
    /// `dir/token-cert.pem`) and serves tokens to `user`:`password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<Self> {
        let (key_der, cert_der) = make_key(dir)?;
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key_der, &rng)
            .map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        let basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let signer = Signer { key, cert_der, basic };
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, &signer);
                }
            }
        });
        Ok(Self { realm: format!("http://{addr}/token"), addr, stop })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wakes the accept
    }
}

/// A P-256 key (PKCS#8 DER) and its self-signed certificate (DER; PEM
/// also written for the registry), made with the openssl command.
fn make_key(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "token-key.pem"])?;
    run(&["pkcs8", "-topk8", "-nocrypt", "-in", "token-key.pem", "-outform", "DER", "-out", "token-key.der"])?;
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "token-key.pem",
        "-days",
        "2",
        "-subj",
        "/CN=berth-test-token",
        "-out",
        "token-cert.pem",
    ])?;
    run(&["x509", "-in", "token-cert.pem", "-outform", "DER", "-out", "token-cert.der"])?;
    Ok((std::fs::read(dir.join("token-key.der"))?, std::fs::read(dir.join("token-cert.der"))?))
}

fn serve(mut stream: TcpStream, signer: &Signer) {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let mut lines = request.split("\r\n");
    let target = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("");
    let authorized = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| k.eq_ignore_ascii_case("authorization") && v.trim() == signer.basic);
    let response = match (authorized, signer.token(target)) {
        (true, Ok(token)) => {
            let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        _ => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
    };
    let _ = stream.write_all(response.as_bytes());
}

impl Signer {
    /// A token granting every scope in the query (`scope=repository:NAME:ACTIONS`).
    fn token(&self, target: &str) -> Result<String> {
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let access: Vec<serde_json::Value> = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(k, _)| *k == "scope")
            .filter_map(|(_, v)| {
                let scope = percent_decode(v);
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
            })
            .collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)] });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "tester", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", access.len()), "access": access,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
