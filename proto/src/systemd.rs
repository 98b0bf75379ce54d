//! Telling systemd how a daemon is, for units of `Type=notify`
//! (deploy/systemd/): ready once it serves, a line of status while it
//! runs, stopping when it stops. Outside systemd (no `NOTIFY_SOCKET`)
//! nothing is sent. With the units' `NotifyAccess=main`, what a child
//! (a shim, a container) might send is ignored.

use sd_notify::NotifyState;

/// Startup is done: the daemon serves.
pub fn ready(status: &str) {
    tell(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What the daemon is doing now (`systemctl status` shows it).
pub fn status(status: &str) {
    tell(&[NotifyState::Status(status)]);
}

/// The daemon has begun to stop.
pub fn stopping() {
    tell(&[NotifyState::Stopping]);
}

fn tell(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("cannot tell systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_and_status_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        // The only test of this crate that touches the variable.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::ready("serving on 198.18.0.1:7400");
        super::status("locked");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "READY=1\nSTATUS=serving on 198.18.0.1:7400\n");
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "STATUS=locked\n");
        // Without the variable, nothing is sent and nothing fails.
        super::ready("ignored");
    }
}
