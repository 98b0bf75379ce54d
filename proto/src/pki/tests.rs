use std::time::Duration;

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn a_root_signs_what_a_node_asks_and_names_it_as_the_root_decides() {
    let ca = Ca::new("c0ffee").unwrap();
    let request = Request::new().unwrap();
    let issued = ca.issue(&request.csr, "c0ffee", Role::Worker, "node7", DAY).unwrap();
    let creds = request.complete(issued.chain.clone(), ca.cert.clone()).unwrap();
    let id = creds.identity().unwrap();
    assert_eq!((id.cluster.as_str(), id.role, id.name.as_str()), ("c0ffee", Role::Worker, "node7"));
    assert_eq!(id.fingerprint, issued.fingerprint);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((id.not_after - now - DAY.as_secs() as i64).abs() < 60, "{} vs {now}", id.not_after);
    // The chain is the leaf, then the root a joining node pins.
    let chain = certificates(&issued.chain).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(fingerprint(&chain[1]), ca.digest());
    assert_eq!(ca.digest().len(), 64);
    // It names the root that signed it; it is due for renewal two thirds in.
    assert_eq!(id.issuer, ca.name());
    assert!(ca.name().contains("berth root CA c0ffee"), "{}", ca.name());
    let two_thirds = now + (DAY.as_secs() * 2 / 3) as i64;
    assert!((id.renew_at() - two_thirds).abs() < 60, "{} vs {two_thirds}", id.renew_at());
}

#[test]
fn requests_that_are_not_requests_are_refused_with_the_reason() {
    let ca = Ca::new("c0ffee").unwrap();
    let err = ca.issue("not a csr", "c0ffee", Role::Worker, "n", DAY).unwrap_err();
    assert_eq!(err.to_string(), "no PEM certificate request found");
    // A request whose signature does not match its key proves nothing.
    let csr = Request::new().unwrap().csr;
    let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
    let last_body = lines.len() - 2;
    let flipped = if lines[last_body].starts_with('A') { "B" } else { "A" };
    lines[last_body].replace_range(0..1, flipped);
    assert!(ca.issue(&lines.join("\n"), "c0ffee", Role::Worker, "n", DAY).is_err());
}

#[test]
fn credentials_survive_a_save_and_load_and_the_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let ca = Ca::new("c1").unwrap();
    let creds = ca.credentials("c1", Role::Server, "s1", DAY, &ca.cert).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    assert_eq!(Credentials::load(&tls).unwrap(), None);
    creds.save(&tls).unwrap();
    assert_eq!(Credentials::load(&tls).unwrap(), Some(creds.clone()));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tls.join("node.key")), 0o600);
    assert_eq!(mode(&tls), 0o700);
    std::fs::write(tls.join("node.crt"), "garbage").unwrap();
    let err = Credentials::load(&tls).unwrap_err().to_string();
    assert!(err.contains("node.crt") && err.contains("no PEM certificate"), "{err}");
}

#[test]
fn a_private_dir_is_made_or_made_so() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let fresh = dir.path().join("a/b");
    private_dir(&fresh).unwrap();
    assert_eq!((mode(&fresh), mode(&dir.path().join("a"))), (0o700, 0o700));
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    private_dir(&open).unwrap();
    assert_eq!(mode(&open), 0o700);
}

#[test]
fn a_renewal_cut_short_leaves_the_old_set_or_the_new_one_never_a_mix() {
    let ca = Ca::new("c1").unwrap();
    let old = ca.credentials("c1", Role::Worker, "n1", DAY, &ca.cert).unwrap();
    let new = ca.credentials("c1", Role::Worker, "n1", DAY, &ca.cert).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    old.save(&tls).unwrap();
    // Cut short while staging (no completion mark): the old set stays.
    let next = tls.join("next");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("node.crt"), &new.chain).unwrap();
    assert_eq!(Credentials::load(&tls).unwrap(), Some(old.clone()));
    assert!(!next.exists());
    // Cut short while moving (staged whole, the chain already moved): the
    // load finishes the move.
    new.save(&tls).unwrap();
    old.save(&tls).unwrap();
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("ca.crt"), &new.roots).unwrap();
    std::fs::write(next.join("node.key"), &new.key).unwrap();
    std::fs::write(next.join("complete"), "").unwrap();
    std::fs::write(tls.join("node.crt"), &new.chain).unwrap();
    assert_eq!(Credentials::load(&tls).unwrap(), Some(new.clone()));
    assert!(!next.exists());
    assert_eq!(Credentials::load(&tls).unwrap(), Some(new));
}

#[test]
fn join_tokens_round_trip_and_bad_ones_say_what_is_wrong() {
    let ca = Ca::new("c2").unwrap();
    let token = JoinToken::new(&ca.digest());
    let text = token.to_string();
    assert!(text.starts_with("BERTH-1-") && text.len() == 8 + 64 + 1 + 32, "{text}");
    let back: JoinToken = text.parse().unwrap();
    assert_eq!(back, token);
    assert!(token.accepts(&back));
    assert!(!token.accepts(&JoinToken::new(&ca.digest())));
    let cases = [
        ("SWMTKN-1-abc", "does not start with BERTH-1-"),
        ("BERTH-1-abc", "has no secret"),
        (&format!("BERTH-1-{}-{}", "A".repeat(64), token.secret), "64 lowercase hex digits"),
        (&format!("BERTH-1-{}-short", token.digest), "32 letters and digits"),
    ];
    for (bad, why) in cases {
        let err = bad.parse::<JoinToken>().unwrap_err().to_string();
        assert!(err.contains(why) && err.contains("berthctl cluster join-token"), "{bad}: {err}");
    }
    // Debug output never shows the secret.
    assert!(!format!("{token:?}").contains(&token.secret));
}
