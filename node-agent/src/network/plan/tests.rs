use berth_proto::model::{AssignedTask, PortSpec, Protocol, Replica};

use super::*;

const ALL: Features = Features { overlay: true, dns: true };

fn net(subnet: &str) -> NodeNetwork {
    NodeNetwork { subnet: subnet.parse().unwrap(), cluster: "198.19.0.0/16".parse().unwrap() }
}

fn port(published: Option<u16>, target: u16, protocol: Protocol, name: Option<&str>) -> PortSpec {
    PortSpec { published, target, protocol, name: name.map(Into::into) }
}

fn replica(slot: u32, address: &str) -> Replica {
    Replica { task: format!("web.{slot}.1"), slot, address: address.parse().unwrap() }
}

fn assignment() -> Assignment {
    Assignment {
        tasks: std::collections::BTreeMap::<String, AssignedTask>::new(),
        network: Some(net("198.19.1.0/24")),
        peers: vec![Peer {
            node_id: "n2".into(),
            public_key: "qnvDeyTcnW2qQyOLzmmH+X5TI8tSrZwNzGnE4ujCz1o=".into(),
            endpoint: "198.18.0.2:51820".parse().unwrap(),
            subnet: "198.19.2.0/24".parse().unwrap(),
        }],
        services: vec![ServiceEndpoints {
            name: "web".into(),
            ports: vec![port(Some(8080), 80, Protocol::Tcp, Some("http"))],
            replicas: vec![replica(1, "198.19.1.2"), replica(2, "198.19.2.2")],
            started: true,
        }],
        ..Assignment::default()
    }
}

/// Runs the plan to its end, each step succeeding unless its kind is in
/// `failing`; returns the kinds carried out.
fn settle(a: &Assignment, applied: &mut Applied, features: Features, failing: &[Kind]) -> Vec<Kind> {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    while let Some(step) = next(a, applied, features, &failed) {
        if failing.contains(&step.kind()) {
            failed.push(step.kind());
            continue;
        }
        done.push(step.kind());
        applied.record(step);
    }
    done
}

#[test]
fn nothing_happens_before_the_cluster_gives_a_subnet() {
    let a = Assignment { network: None, ..assignment() };
    assert_eq!(next(&a, &Applied::default(), ALL, &[]), None);
}

#[test]
fn a_node_sets_up_in_order_and_then_rests() {
    let a = assignment();
    let mut applied = Applied::default();
    let done = settle(&a, &mut applied, ALL, &[]);
    assert_eq!(done, [Kind::Bridge, Kind::Overlay, Kind::Peers, Kind::Mesh, Kind::Dns, Kind::Zone]);
    let mesh = applied.mesh.clone().unwrap();
    assert_eq!(mesh[0].backends.len(), 2, "the peer's replica is reachable through the overlay");
    let zone = applied.zone.clone().unwrap();
    assert_eq!((zone[0].replicas.len(), zone[0].ports[0].name.as_str(), zone[0].ports[0].port), (2, "http", 80));
    assert_eq!(next(&a, &applied, ALL, &[]), None, "at rest");
    // A replica goes: the mesh and the zone follow, nothing else.
    let mut fewer = a.clone();
    fewer.services[0].replicas.pop();
    assert_eq!(settle(&fewer, &mut applied, ALL, &[]), [Kind::Mesh, Kind::Zone]);
    // A peer moves: only the peers.
    let mut moved = fewer.clone();
    moved.peers[0].endpoint = "198.18.0.9:51820".parse().unwrap();
    assert_eq!(settle(&moved, &mut applied, ALL, &[]), [Kind::Peers]);
}

#[test]
fn without_an_overlay_the_mesh_keeps_to_its_own_subnet() {
    let a = assignment();
    let mut applied = Applied::default();
    let done = settle(&a, &mut applied, ALL, &[Kind::Overlay]);
    assert_eq!(done, [Kind::Bridge, Kind::Mesh, Kind::Dns, Kind::Zone], "the overlay failed this pass");
    assert_eq!(applied.mesh.as_ref().unwrap()[0].backends, ["198.19.1.2".parse::<Ipv4Addr>().unwrap()]);
    assert!(!applied.overlay, "tried again on the next pass");
    assert_eq!(settle(&a, &mut applied, ALL, &[]), [Kind::Overlay, Kind::Peers, Kind::Mesh]);
    assert_eq!(applied.mesh.as_ref().unwrap()[0].backends.len(), 2);
    let plain = Features { overlay: false, dns: false };
    let mut bare = Applied::default();
    assert_eq!(settle(&a, &mut bare, plain, &[]), [Kind::Bridge, Kind::Mesh]);
    assert_eq!(next(&a, &bare, plain, &[]), None);
}

#[test]
fn nothing_waits_on_a_bridge_that_failed_and_a_new_subnet_starts_over() {
    let a = assignment();
    assert!(settle(&a, &mut Applied::default(), ALL, &[Kind::Bridge]).is_empty());
    let mut applied = Applied::default();
    settle(&a, &mut applied, ALL, &[]);
    let moved = Assignment { network: Some(net("198.19.7.0/24")), ..a };
    let done = settle(&moved, &mut applied, ALL, &[]);
    assert_eq!(done, [Kind::Bridge, Kind::Overlay, Kind::Peers, Kind::Mesh, Kind::Dns, Kind::Zone]);
}

#[test]
fn the_mesh_gets_published_ports_only_in_a_stable_order() {
    let services = vec![
        ServiceEndpoints {
            name: "web".into(),
            ports: vec![
                port(Some(8080), 80, Protocol::Tcp, None),
                port(None, 9000, Protocol::Tcp, None),
                port(Some(8080), 80, Protocol::Udp, None),
            ],
            replicas: vec![replica(1, "198.19.1.2"), replica(2, "fd00::2"), replica(3, "198.19.2.2")],
            started: true,
        },
        ServiceEndpoints {
            name: "db".into(),
            ports: vec![port(Some(5432), 5432, Protocol::Tcp, None)],
            replicas: vec![],
            started: false,
        },
    ];
    let got = published(&services);
    let summary: Vec<(u16, Protocol, &str, usize)> =
        got.iter().map(|p| (p.port, p.protocol, p.service.as_str(), p.backends.len())).collect();
    assert_eq!(
        summary,
        [(5432, Protocol::Tcp, "db", 0), (8080, Protocol::Tcp, "web", 2), (8080, Protocol::Udp, "web", 2)]
    );
    assert_eq!(got[1].backends, ["198.19.1.2".parse::<Ipv4Addr>().unwrap(), "198.19.2.2".parse().unwrap()]);
    let mut reversed = services.clone();
    reversed.reverse();
    assert_eq!(published(&reversed), got);
}
