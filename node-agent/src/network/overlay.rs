//! The overlay: a WireGuard interface per node (boringtun, in the agent's
//! process), listening on UDP on the advertise address. Its peers are all
//! other nodes, each allowed its containers' subnet; a route sends the
//! cluster CIDR through the interface (the node's own subnet stays on its
//! bridge, the more specific route), so container traffic between nodes is
//! always encrypted.
//!
//! boringtun is configured only through the UAPI text protocol, and the
//! standard socket (`/var/run/wireguard/IFACE.sock`) answers it, so `wg
//! show IFACE` works on a node (see [`Uapi`] for why the agent serves it).
//! The interface is named after the node's key (`bw` + 8 hex digits): two
//! hosts sharing a filesystem never share a socket path. Peer changes are a
//! pure diff of the old and new peer lists, sent as UAPI `set`s (removals, then additions).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use berth_proto::model::Cidr;
use boringtun::device::{DeviceConfig, DeviceHandle};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::Host;

const KEY_FILE: &str = "wireguard.key";
/// Keeps NAT mappings and stateful firewalls on the path open.
const KEEPALIVE_SECS: u32 = 25;

/// A node's WireGuard key pair, base64 as `wg` shows keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub private: String,
    pub public: String,
}

impl Keys {
    /// The key pair kept in `dir` (made at first start; the private key
    /// never leaves the node, and its file is mode 0600).
    pub fn load_or_make(dir: &Path) -> io::Result<Self> {
        let path = dir.join(KEY_FILE);
        let secret = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes: [u8; 32] = STANDARD
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| io::Error::other(format!("{} does not hold a WireGuard key", path.display())))?;
                StaticSecret::from(bytes)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Made under a temporary name, synced, then renamed: a crash
                // never leaves a part of a key that would fail every start.
                let secret = StaticSecret::random_from_rng(rand_core::OsRng);
                let tmp = dir.join(format!(".{KEY_FILE}.tmp"));
                let _ = std::fs::remove_file(&tmp);
                let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                file.write_all(STANDARD.encode(secret.to_bytes()).as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()?;
                secret
            }
            Err(e) => return Err(e),
        };
        let public = PublicKey::from(&secret);
        Ok(Self { private: STANDARD.encode(secret.to_bytes()), public: STANDARD.encode(public.as_bytes()) })
    }

    /// The interface name for this node: `bw` and 8 hex digits of its key.
    pub fn interface(&self) -> String {
        let bytes = STANDARD.decode(&self.public).unwrap_or_default();
        format!("bw{}", hex::encode(bytes.get(..4).unwrap_or_default()))
    }
}

/// A peer as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub endpoint: String,
    pub subnet: Cidr,
}

/// base64 key to the hex UAPI wants; None if it is not a key.
fn hex_key(b64: &str) -> Option<String> {
    STANDARD.decode(b64).ok().filter(|b| b.len() == 32).map(hex::encode)
}

/// The UAPI `set` requests that turn peer list `old` into `new` (keyed by
/// base64 public key): the removals, then the additions; none when nothing
/// changes. Every peer about to be added is removed first, also one `old`
/// says is absent (removing an absent peer does nothing): boringtun 0.7
/// cannot change a peer in place, and panics its device thread when asked
/// to, so an addition must be safe even when `old` is wrong. The two are
/// separate requests because boringtun's parser carries a peer's
/// `remove=true` over to the peers after it in the same request.
pub fn peer_changes(old: &BTreeMap<String, Peer>, new: &BTreeMap<String, Peer>) -> Vec<String> {
    let gone = old.keys().filter(|k| !new.contains_key(*k));
    let changed = new.iter().filter(|(k, p)| old.get(*k) != Some(p)).map(|(k, _)| k);
    let mut removals = String::new();
    for key in gone.chain(changed) {
        if let Some(hex) = hex_key(key) {
            removals += &format!("public_key={hex}\nremove=true\n");
        }
    }
    let mut additions = String::new();
    for (key, peer) in new.iter().filter(|(k, p)| old.get(*k) != Some(p)) {
        if let Some(hex) = hex_key(key) {
            additions += &format!(
                "public_key={hex}\nendpoint={}\npersistent_keepalive_interval={KEEPALIVE_SECS}\nreplace_allowed_ips=true\nallowed_ip={}\n",
                peer.endpoint, peer.subnet
            );
        }
    }
    [removals, additions].into_iter().filter(|r| !r.is_empty()).map(|r| format!("set=1\n{r}")).collect()
}

/// boringtun's end of the configuration channel, and the standard UAPI
/// socket (`/var/run/wireguard/IFACE.sock`) served in front of it.
///
/// Why not let boringtun serve the socket itself: when it does, it also
/// blocks SIGTERM and SIGINT and takes them through a signalfd, so the
/// agent never hears it is asked to stop. Given a file descriptor instead,
/// it handles no signals; the agent then answers `wg show` on the standard
/// path by passing each `get` through, one at a time (a `set` from outside
/// is refused: the agent owns the configuration).
#[derive(Debug, Clone)]
struct Uapi {
    channel: Arc<Mutex<(BufReader<UnixStream>, UnixStream)>>,
}

impl Uapi {
    /// One request: lines ending with a blank one; the answer likewise.
    fn request(&self, request: &str) -> io::Result<Vec<String>> {
        let mut channel = self.channel.lock().map_err(|_| io::Error::other("the UAPI channel is poisoned"))?;
        let (reader, writer) = &mut *channel;
        drain(reader)?;
        // boringtun reads a `get` as its one line; a `set` runs to a blank line.
        let body = request.trim_end_matches('\n');
        let text = if body.starts_with("get=") { format!("{body}\n") } else { format!("{body}\n\n") };
        writer.write_all(text.as_bytes())?;
        let mut answer = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::other("the WireGuard device has stopped"));
            }
            let line = line.trim_end_matches('\n').to_owned();
            if line.is_empty() {
                return Ok(answer);
            }
            answer.push(line);
        }
    }

    /// A `set` that must succeed.
    fn set(&self, request: &str) -> io::Result<()> {
        let answer = self.request(request)?;
        match answer.last().map(String::as_str) {
            Some("errno=0") => Ok(()),
            other => Err(io::Error::other(format!("WireGuard refused the configuration: {other:?}"))),
        }
    }

    /// Serves `wg` on the standard socket until the process ends.
    fn serve(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        // Whoever may connect may set keys and peers: root alone.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let uapi = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = uapi.pass(conn);
            }
        });
        Ok(())
    }

    fn pass(&self, conn: UnixStream) -> io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut request = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\n" {
                break;
            }
            request += &line;
        }
        // Others may look (`wg show`), not change: the agent owns the
        // configuration, and a `set` boringtun rejects halfway would leave
        // lines in the channel that answer later requests.
        let first = request.lines().next().unwrap_or_default();
        let mut answer = match first {
            "get=1" => self.request("get=1")?.join("\n"),
            "set=1" => "errno=1".to_owned(), // EPERM
            _ => "errno=22".to_owned(),      // EINVAL
        };
        answer += "\n\n";
        (&conn).write_all(answer.as_bytes())
    }
}

/// The device's threads: half the node's cores, 1 to 4. The node has
/// containers to run too, and on 2 cores one thread per device carried
/// 0.67 Gbit/s through the tunnel against 0.51 with two (bench/overlay.sh).
fn device_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / 2).clamp(1, 4)
}

/// The socket buffers wireguard-go asks for. boringtun leaves the kernel's
/// default (about 208 KiB): one TCP stream through the tunnel overflowed
/// the receiving socket, dropping one packet in six.
const SOCKET_BUFFER: usize = 7 << 20;

/// Sizes the UDP sockets that boringtun opened on `port` in this process
/// (it has no option for it): its listening ones and the one it connects
/// per peer, all bound to that port; how many it changed.
#[allow(unsafe_code)]
fn size_sockets(port: u16) -> io::Result<usize> {
    use nix::sys::socket::{getsockname, getsockopt, setsockopt, sockopt, SockType, SockaddrLike, SockaddrStorage};
    use std::os::fd::{AsRawFd, BorrowedFd};
    let mut sized = 0;
    for (raw, _) in own_descriptors()? {
        // SAFETY: the descriptor was open in this process a moment ago.
        // boringtun may close a peer's socket meanwhile (a new handshake),
        // and the number may be reused: then the checks below fail, or at
        // worst a buffer size is set on another UDP socket of this port.
        // Only socket options are read and set on it.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let Ok(addr) = getsockname::<SockaddrStorage>(fd.as_raw_fd()) else { continue };
        let bound = addr.as_sockaddr_in().map(|a| a.port()).or_else(|| addr.as_sockaddr_in6().map(|a| a.port()));
        let udp = getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Datagram);
        if bound != Some(port) || !udp || addr.family().is_none() {
            continue;
        }
        // The kernel reports twice what was set.
        if getsockopt(&fd, sockopt::RcvBuf).is_ok_and(|size| size >= SOCKET_BUFFER) {
            continue;
        }
        setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).map_err(io::Error::from)?;
        setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).map_err(io::Error::from)?;
        sized += 1;
    }
    Ok(sized)
}

/// This process's open descriptors and what each is (`/proc/self/fd`):
/// how the agent reaches the ones boringtun opened and does not expose.
fn own_descriptors() -> io::Result<Vec<(i32, PathBuf)>> {
    let entries = std::fs::read_dir("/proc/self/fd")?.flatten();
    Ok(entries
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, std::fs::read_link(e.path()).unwrap_or_default()))
        })
        .collect())
}

/// Sets close-on-exec on this process's TUN descriptors.
fn close_tun_on_exec() -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    for (fd, _) in own_descriptors()?.into_iter().filter(|(_, target)| target == Path::new("/dev/net/tun")) {
        let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).map_err(io::Error::from)?);
        fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    Ok(())
}

/// Drops what an earlier request's answer left in the channel (one that
/// came after its reader gave up), so it cannot pass for the next answer.
fn drain(reader: &mut BufReader<UnixStream>) -> io::Result<()> {
    let stale = reader.buffer().len();
    reader.consume(stale);
    reader.get_ref().set_nonblocking(true)?;
    let mut sink = [0u8; 4096];
    while matches!(reader.get_mut().read(&mut sink), Ok(n) if n > 0) {}
    reader.get_ref().set_nonblocking(false)
}

fn socket_path(interface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{interface}.sock"))
}

/// The running interface. It lives as long as the agent's process: the
/// device's threads and TUN go with the process, and dropping an `Overlay`
/// only removes its UAPI socket (boringtun's handle is not dropped: its
/// drop stops the device but leaves its threads).
pub struct Overlay {
    pub interface: String,
    port: u16,
    peers: BTreeMap<String, Peer>,
    uapi: Uapi,
    _device: std::mem::ManuallyDrop<DeviceHandle>,
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(socket_path(&self.interface));
    }
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("interface", &self.interface).field("peers", &self.peers.len()).finish()
    }
}

impl Overlay {
    /// Brings up the interface with the node's key on `port`, and routes
    /// the cluster CIDR through it from `source` (the node's bridge
    /// address: replies to the host come back inside its subnet, which the
    /// peers allow).
    pub fn start(
        keys: &Keys,
        port: u16,
        mtu: u32,
        cluster: Cidr,
        source: Ipv4Addr,
        host: &impl Host,
    ) -> io::Result<Self> {
        let interface = keys.interface();
        // An interface of that name outlives an agent whose TUN descriptor
        // a child kept (shims of earlier builds did): boringtun opens TUNs
        // multi-queue, so it would add a queue beside the dead one, and the
        // kernel would hash about half the flows into the queue nobody
        // reads. A fresh interface has none.
        if host.link_exists(&interface) {
            host.ip(None, &[format!("link delete dev {interface}")])?;
        }
        let (ours, theirs) = UnixStream::pair()?;
        let config = DeviceConfig {
            n_threads: device_threads(),
            use_multi_queue: false,
            // A connected socket per peer (boringtun's default), made at
            // its handshake and sized by `Overlay::size_sockets`.
            use_connected_socket: true,
            uapi_fd: theirs.into_raw_fd(),
        };
        let device = DeviceHandle::new(&interface, config)
            .map_err(|e| io::Error::other(format!("creating WireGuard interface {interface}: {e:?}")))?;
        // boringtun opens the TUN without close-on-exec: every container's
        // shim would inherit it and keep the interface alive after the agent.
        close_tun_on_exec()?;
        // A device thread that died must not hang the agent.
        ours.set_read_timeout(Some(Duration::from_secs(2)))?;
        let uapi = Uapi { channel: Arc::new(Mutex::new((BufReader::new(ours.try_clone()?), ours))) };
        let private =
            hex_key(&keys.private).ok_or_else(|| io::Error::other("the node's WireGuard key is not valid"))?;
        uapi.set(&format!("set=1\nprivate_key={private}\nlisten_port={port}\n"))?;
        size_sockets(port)?;
        uapi.serve(&socket_path(&interface))?;
        host.ip(
            None,
            &[
                format!("link set dev {interface} mtu {mtu} up"),
                format!("route replace {cluster} dev {interface} src {source}"),
            ],
        )?;
        Ok(Self { interface, port, peers: BTreeMap::new(), uapi, _device: std::mem::ManuallyDrop::new(device) })
    }

    /// Gives the device's sockets made since the last call (a peer's, at
    /// its handshake) the large buffers; how many it changed.
    pub fn size_sockets(&self) -> io::Result<usize> {
        size_sockets(self.port)
    }

    /// The peers the device has and the bytes they carried (`get=1`).
    pub fn traffic(&self) -> io::Result<crate::stats::Traffic> {
        Ok(crate::stats::Traffic::of(&self.uapi.request("get=1")?))
    }

    /// Makes the peers `peers`, changing only what differs.
    pub fn set_peers(&mut self, peers: BTreeMap<String, Peer>) -> io::Result<()> {
        for request in peer_changes(&self.peers, &peers) {
            if let Err(e) = self.uapi.set(&request) {
                // What the device holds is unknown now: next time, every
                // peer of either list is removed, and the wanted ones added.
                let unsure = peers.iter().map(|(k, p)| (k.clone(), Peer { endpoint: String::new(), subnet: p.subnet }));
                self.peers.extend(unsure);
                return Err(e);
            }
        }
        self.peers = peers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        STANDARD.encode([n; 32])
    }

    fn peer(endpoint: &str, subnet: &str) -> Peer {
        Peer { endpoint: endpoint.into(), subnet: subnet.parse().unwrap() }
    }

    #[test]
    fn peer_lists_change_by_diff() {
        let one = BTreeMap::from([(key(1), peer("198.18.0.1:51820", "198.19.0.0/24"))]);
        assert!(peer_changes(&one, &one).is_empty(), "nothing to say");
        let hex1 = hex::encode([1u8; 32]);
        let hex2 = hex::encode([2u8; 32]);
        assert_eq!(
            peer_changes(&BTreeMap::new(), &one),
            [
                format!("set=1\npublic_key={hex1}\nremove=true\n"),
                format!("set=1\npublic_key={hex1}\nendpoint=198.18.0.1:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=198.19.0.0/24\n")
            ],
            "a new peer is removed first too, in case the device has it already"
        );
        // One moves to a new address: removed, then added in a request of its own.
        let moved = BTreeMap::from([(key(1), peer("198.18.0.9:51820", "198.19.0.0/24"))]);
        let requests = peer_changes(&one, &moved);
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(requests[0], format!("set=1\npublic_key={hex1}\nremove=true\n"));
        assert!(requests[1].starts_with(&format!("set=1\npublic_key={hex1}\nendpoint=198.18.0.9:51820\n")));
        assert!(!requests[1].contains("remove"), "an addition never follows a removal in one request");
        // One leaves and another joins.
        let other = BTreeMap::from([(key(2), peer("198.18.0.2:51820", "198.19.1.0/24"))]);
        let requests = peer_changes(&one, &other);
        assert_eq!(requests[0], format!("set=1\npublic_key={hex1}\nremove=true\npublic_key={hex2}\nremove=true\n"));
        assert!(requests[1].starts_with(&format!("set=1\npublic_key={hex2}\n")), "{requests:?}");
        // A key that is not one is skipped, not sent.
        let junk = BTreeMap::from([("not a key".to_owned(), peer("198.18.0.3:1", "198.19.2.0/24"))]);
        assert!(peer_changes(&BTreeMap::new(), &junk).is_empty());
    }

    #[test]
    fn keys_are_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_make(dir.path()).unwrap();
        assert_eq!(Keys::load_or_make(dir.path()).unwrap(), keys, "the same key after a restart");
        assert_eq!((keys.public.len(), keys.private.len()), (44, 44));
        assert_ne!(keys.public, keys.private);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let name = keys.interface();
        assert!(name.len() == 10 && name.starts_with("bw"), "{name}");
    }
}
