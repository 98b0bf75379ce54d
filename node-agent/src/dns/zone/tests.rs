use super::*;

fn zone() -> Zone {
    let mut z = Zone::new("berth.local", 5).unwrap();
    let http = NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 };
    let web =
        Service { name: "web".into(), replicas: vec![(1, ip("198.19.1.2")), (2, ip("198.19.2.2"))], ports: vec![http] };
    let idle = Service { name: "idle".into(), replicas: vec![], ports: vec![] };
    z.update(Some("198.19.0.0/16".parse().unwrap()), vec![web, idle]);
    z
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// The address of an A or AAAA record; panics on any other.
fn address(r: &Record) -> IpAddr {
    match &r.data {
        RData::A(a) => a.0.into(),
        RData::AAAA(a) => a.0.into(),
        other => panic!("not an address record: {other:?}"),
    }
}

/// The addresses of an answer; panics on anything but Found.
fn addresses(answer: Answer) -> Vec<IpAddr> {
    match answer {
        Answer::Found { answers, .. } => answers.iter().map(address).collect(),
        other => panic!("not found: {other:?}"),
    }
}

#[test]
fn a_service_answers_with_its_running_replicas_by_any_of_its_names() {
    let z = zone();
    let both = vec![ip("198.19.1.2"), ip("198.19.2.2")];
    assert_eq!(addresses(z.answer(&name("web.berth.local."), RecordType::A)), both);
    assert_eq!(addresses(z.answer(&name("WEB.Berth.Local"), RecordType::A)), both, "names are case-blind");
    assert_eq!(addresses(z.answer(&name("web."), RecordType::A)), both, "a bare service name");
    assert_eq!(addresses(z.answer(&name("2.web.berth.local."), RecordType::A)), [ip("198.19.2.2")]);
    let Answer::Found { answers, .. } = z.answer(&name("web.berth.local."), RecordType::A) else { panic!() };
    assert!(answers.iter().all(|r| r.ttl == 5 && r.name == name("web.berth.local.")));
}

#[test]
fn before_its_first_endpoints_the_zone_denies_nothing_and_forwards_the_rest() {
    let mut z = Zone::new("berth.local", 5).unwrap();
    // Not NXDOMAIN, which a client would remember: the name may well exist.
    assert_eq!(z.answer(&name("web.berth.local."), RecordType::A), Answer::NotReady);
    assert_eq!(z.answer(&name("1.web.berth.local."), RecordType::A), Answer::NotReady);
    assert_eq!(z.answer(&name("example.com."), RecordType::A), Answer::Elsewhere);
    // An empty cluster is an answer too.
    z.update(Some("198.19.0.0/16".parse().unwrap()), vec![]);
    assert!(matches!(z.answer(&name("web.berth.local."), RecordType::A), Answer::NxDomain { .. }));
}

#[test]
fn unknown_names_in_the_domain_do_not_exist_and_others_are_elsewhere() {
    let z = zone();
    for missing in ["db.berth.local.", "3.web.berth.local.", "x.web.berth.local.", "a.b.c.berth.local."] {
        match z.answer(&name(missing), RecordType::A) {
            Answer::NxDomain { soa } => {
                assert_eq!(soa.record_type(), RecordType::SOA);
                assert_eq!(soa.name, name("berth.local."));
            }
            other => panic!("{missing}: {other:?}"),
        }
    }
    for outside in ["example.com.", "db.", "web.example.com.", "8.8.8.8.in-addr.arpa."] {
        assert_eq!(z.answer(&name(outside), RecordType::A), Answer::Elsewhere, "{outside}");
    }
}

#[test]
fn a_name_without_that_type_or_without_replicas_is_no_data() {
    let z = zone();
    assert!(matches!(z.answer(&name("web.berth.local."), RecordType::AAAA), Answer::NoData { .. }));
    assert!(matches!(z.answer(&name("idle.berth.local."), RecordType::A), Answer::NoData { .. }));
    assert!(matches!(z.answer(&name("berth.local."), RecordType::A), Answer::NoData { .. }));
    let Answer::Found { answers, .. } = z.answer(&name("berth.local."), RecordType::SOA) else { panic!("apex SOA") };
    assert_eq!(answers[0].record_type(), RecordType::SOA);
}

#[test]
fn replica_addresses_have_ptr_names_and_other_cluster_addresses_do_not_exist() {
    let z = zone();
    match z.answer(&name("2.2.19.198.in-addr.arpa."), RecordType::PTR) {
        Answer::Found { answers, .. } => match &answers[0].data {
            RData::PTR(target) => assert_eq!(target.0, name("2.web.berth.local.")),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(matches!(z.answer(&name("99.1.19.198.in-addr.arpa."), RecordType::PTR), Answer::NxDomain { .. }));
    assert_eq!(z.answer(&name("1.0.18.198.in-addr.arpa."), RecordType::PTR), Answer::Elsewhere, "not the cluster's");
}

#[test]
fn an_update_replaces_everything() {
    let mut z = zone();
    z.update(None, vec![Service { name: "web".into(), replicas: vec![(3, ip("198.19.3.2"))], ports: vec![] }]);
    assert_eq!(addresses(z.answer(&name("web.berth.local."), RecordType::A)), [ip("198.19.3.2")]);
    assert!(matches!(z.answer(&name("idle.berth.local."), RecordType::A), Answer::NxDomain { .. }));
    assert!(matches!(z.answer(&name("2.2.19.198.in-addr.arpa."), RecordType::PTR), Answer::Elsewhere));
}

#[test]
fn a_named_port_has_srv_records_whose_targets_resolve_in_the_same_answer() {
    let z = zone();
    let Answer::Found { answers, additionals } = z.answer(&name("_http._tcp.web.berth.local."), RecordType::SRV) else {
        panic!("no SRV")
    };
    let srv: Vec<(u16, Name)> = answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.port, s.target.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(srv, [(8080, name("1.web.berth.local.")), (8080, name("2.web.berth.local."))]);
    let extra: Vec<(Name, IpAddr)> = additionals.iter().map(|r| (r.name.clone(), address(r))).collect();
    assert_eq!(extra, [(name("1.web.berth.local."), ip("198.19.1.2")), (name("2.web.berth.local."), ip("198.19.2.2"))]);
    for missing in ["_http._udp.web.berth.local.", "_ftp._tcp.web.berth.local.", "_http._tcp.db.berth.local."] {
        assert!(matches!(z.answer(&name(missing), RecordType::SRV), Answer::NxDomain { .. }), "{missing}");
    }
    assert!(matches!(z.answer(&name("_http._tcp.web.berth.local."), RecordType::A), Answer::NoData { .. }));
}

#[test]
fn ipv6_replicas_answer_aaaa_and_their_ip6_arpa_names() {
    let mut z = zone();
    let dual = Service {
        name: "db".into(),
        replicas: vec![(1, ip("198.19.1.9")), (2, ip("fd00:b::2"))],
        ports: vec![NamedPort { name: "pg".into(), protocol: Protocol::Tcp, port: 5432 }],
    };
    z.update(Some("198.19.0.0/16".parse().unwrap()), vec![dual]);
    assert_eq!(addresses(z.answer(&name("db.berth.local."), RecordType::A)), [ip("198.19.1.9")]);
    assert_eq!(addresses(z.answer(&name("db.berth.local."), RecordType::AAAA)), [ip("fd00:b::2")]);
    assert_eq!(addresses(z.answer(&name("db.berth.local."), RecordType::ANY)), [ip("198.19.1.9"), ip("fd00:b::2")]);
    assert!(matches!(z.answer(&name("1.db.berth.local."), RecordType::AAAA), Answer::NoData { .. }));
    let Answer::Found { additionals, .. } = z.answer(&name("_pg._tcp.db.berth.local."), RecordType::SRV) else {
        panic!("no SRV")
    };
    assert_eq!(additionals.iter().map(address).collect::<Vec<_>>(), [ip("198.19.1.9"), ip("fd00:b::2")]);
    let arpa = Name::from(ip("fd00:b::2"));
    match z.answer(&arpa, RecordType::PTR) {
        Answer::Found { answers, .. } => match &answers[0].data {
            RData::PTR(target) => assert_eq!(target.0, name("2.db.berth.local.")),
            other => panic!("{other:?}"),
        },
        other => panic!("{arpa}: {other:?}"),
    }
    // Another IPv6 address, or a network's name rather than one address, is not ours.
    assert_eq!(z.answer(&Name::from(ip("fd00:b::3")), RecordType::PTR), Answer::Elsewhere);
    assert_eq!(z.answer(&name("b.0.0.0.0.0.d.f.ip6.arpa."), RecordType::PTR), Answer::Elsewhere);
    assert_eq!(z.answer(&name("19.198.in-addr.arpa."), RecordType::PTR), Answer::Elsewhere);
}

#[test]
fn the_domain_must_be_a_name() {
    assert!(Zone::new("berth.local.", 5).is_ok());
    assert!(Zone::new("", 5).is_err());
    assert!(Zone::new("bad name!", 5).is_err());
}

#[test]
fn a_stacks_service_answers_by_its_full_name_and_by_its_name_under_the_stack() {
    let mut z = Zone::new("berth.local", 5).unwrap();
    let pg = NamedPort { name: "pg".into(), protocol: Protocol::Tcp, port: 5432 };
    let db = Service { name: "shop_db".into(), replicas: vec![(1, ip("198.19.1.7"))], ports: vec![pg] };
    let web = Service { name: "web".into(), replicas: vec![(1, ip("198.19.1.2"))], ports: vec![] };
    z.update(None, vec![db, web]);
    for asked in ["shop_db.berth.local.", "shop_db.", "db.shop.berth.local.", "1.db.shop.berth.local."] {
        assert_eq!(addresses(z.answer(&name(asked), RecordType::A)), [ip("198.19.1.7")], "{asked}");
    }
    // What a stack's container searches first misses other services, so
    // the cluster-wide name answers next.
    assert!(matches!(z.answer(&name("web.shop.berth.local."), RecordType::A), Answer::NxDomain { .. }));
    assert!(matches!(z.answer(&name("db.other.berth.local."), RecordType::A), Answer::NxDomain { .. }));
    let Answer::Found { answers, additionals } = z.answer(&name("_pg._tcp.db.shop.berth.local."), RecordType::SRV)
    else {
        panic!("no SRV")
    };
    let RData::SRV(srv) = &answers[0].data else { panic!("{answers:?}") };
    assert_eq!((srv.port, srv.target.clone()), (5432, name("1.db.shop.berth.local.")));
    assert_eq!(additionals[0].name, name("1.db.shop.berth.local."));
}
