//! What a container sees in `/etc/hosts` and `/etc/resolv.conf`, as text:
//! its own name and address, the spec's extra hosts (`--add-host`), and
//! the node's resolver settings with the spec's `--dns`, `--dns-search`
//! and `--dns-option` laid over them, as Docker writes them.

use berth_proto::model::Options;

/// `/etc/hosts`: localhost, the container's own name, then the extra hosts.
pub fn hosts(host: &str, own: &str, options: &Options) -> String {
    let mut out = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{host}\n");
    for (name, address) in &options.extra_hosts {
        out.push_str(&format!("{address}\t{name}\n"));
    }
    out
}

/// `/etc/resolv.conf` from `base` (the node's, or the node's DNS): the
/// spec's nameservers and search domains replace base's when given, its
/// options are added to base's.
pub fn resolv_conf(base: &str, options: &Options) -> String {
    let mut out: String = base
        .lines()
        .filter(|l| match l.split_whitespace().next() {
            Some("nameserver") => options.dns.is_empty(),
            Some("search") => options.dns_search.is_empty(),
            _ => true,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for server in &options.dns {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !options.dns_search.is_empty() {
        out.push_str(&format!("search {}\n", options.dns_search.join(" ")));
    }
    if !options.dns_options.is_empty() {
        out.push_str(&format!("options {}\n", options.dns_options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_hosts_follow_the_containers_own() {
        let options =
            Options { extra_hosts: vec![("db.internal".into(), "198.18.0.5".parse().unwrap())], ..Default::default() };
        let text = hosts("web.1.1", "198.19.1.2", &options);
        assert!(text.ends_with("198.19.1.2\tweb.1.1\n198.18.0.5\tdb.internal\n"), "{text}");
    }

    #[test]
    fn the_specs_dns_settings_lie_over_the_nodes() {
        let base = "nameserver 198.19.1.1\nsearch berth.local\noptions edns0\n";
        assert_eq!(resolv_conf(base, &Options::default()), base, "nothing given, nothing changed");
        let options = Options {
            dns: vec!["198.18.0.53".parse().unwrap()],
            dns_search: vec!["example.com".into(), "corp".into()],
            dns_options: vec!["ndots:2".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(base, &options),
            "options edns0\nnameserver 198.18.0.53\nsearch example.com corp\noptions ndots:2\n"
        );
        let only_options = Options { dns_options: vec!["timeout:1".into()], ..Default::default() };
        assert_eq!(resolv_conf(base, &only_options), format!("{base}options timeout:1\n"));
    }
}
