//! The `Cluster` gRPC service that berthctl calls.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::convert::spec_from_request;
use berth_proto::model::{self, validate_service_name, Availability, FileKind, InvalidField, NodeInfo};
use berth_proto::pb::cluster::cluster_client::ClusterClient;
use berth_proto::pb::cluster::cluster_server::Cluster;
use berth_proto::pb::cluster::*;
use berth_proto::quota::{Held, Permit, Quota};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{access, streams};

use crate::node::{LeaderOp, Node};
use crate::state::{Access, Command, Query, QueryReply, Response as Applied};

#[derive(Debug, Clone)]
pub struct ClusterApi {
    pub node: Arc<Node>,
    /// Each caller's open log follows and event watches.
    watches: Quota,
    /// What every member reads, for commands newer releases add.
    levels: super::levels::Levels,
    /// Resolves tags to digests.
    pinner: Arc<super::pin::Pinner>,
}

/// Marks a request that a server passed on, so it is not passed on again.
pub(super) const FORWARDED: &str = "berth-forwarded";

fn invalid(e: InvalidField) -> Status {
    Status::invalid_argument(format!("invalid service spec: {e}"))
}

fn name_arg(name: &str) -> Result<(), Status> {
    validate_service_name(name).map_err(invalid)
}

impl ClusterApi {
    pub fn new(
        node: Arc<Node>,
        watches_per_caller: usize,
        registries: berth_proto::registries::Registries,
        levels: super::levels::Levels,
    ) -> Self {
        Self {
            node,
            pinner: Arc::new(super::pin::Pinner::new(registries)),
            watches: Quota::new("log streams and event watches", watches_per_caller),
            levels,
        }
    }

    /// A permit for one more open-ended stream of the caller.
    fn watch<T>(&self, req: &Request<T>) -> Result<Permit, Status> {
        self.watches.take(&super::auth::caller(req)?.to_string())
    }

    fn allow<T>(&self, req: &Request<T>, need: Access, what: &str) -> Result<(), Status> {
        super::auth::user(&self.node, req, need, what)
    }

    async fn write_service(&self, cmd: Command) -> Result<(Service, String), Status> {
        match self.node.write(cmd).await? {
            Applied::Service { service, outcome } => Ok((service.into(), outcome.to_string())),
            Applied::Rejected(r) => Err(r.into()),
            other => Err(Status::internal(format!("unexpected state machine reply {other:?}"))),
        }
    }

    /// A client's spec, checked, its image's tag resolved to a digest if
    /// `resolve` (see `pin`), and what could not be done. A client of the
    /// release before global services sends no placement (newer ones always
    /// do for an update): the service keeps its mode and placement rather
    /// than losing them. A global service or a placement is refused until
    /// every member reads them (`state::READS` 1), and mounts likewise (2),
    /// so no server drops them from its state.
    async fn spec_in(
        &self,
        spec: Option<ServiceSpec>,
        existing: bool,
        resolve: bool,
    ) -> Result<(model::ServiceSpec, Vec<String>), Status> {
        let mut spec = spec.ok_or_else(|| invalid(InvalidField::new("spec", "", "a service spec")))?;
        let now = match existing {
            true => match self.node.read(Query::GetService(spec.name.clone()), false).await? {
                QueryReply::Service(now, _) => now,
                other => return Err(Status::internal(format!("unexpected query reply {other:?}"))),
            },
            false => None,
        };
        if let Some(now) = now.as_ref().filter(|_| spec.placement.is_none()) {
            spec.mode = now.spec.mode.to_string();
            spec.placement = Some(now.spec.placement.to_pb());
        }
        let mut spec = spec_from_request(Some(spec)).map_err(invalid)?;
        let (needs, what) = needed_level(&spec);
        if needs > 0 {
            self.levels.require(&self.node, needs, what).await?;
        }
        let mut warnings = Vec::new();
        // Resolved when the image is named anew: not for a spec that keeps
        // the stored image (an update of something else, of a service made
        // with --no-resolve-image too), nor for one that must never pull.
        let kept = now.as_ref().is_some_and(|s| s.spec.image == spec.image);
        if resolve && !kept && spec.overrides.options.pull != model::Pull::Never {
            match self.pinner.pin(&spec.image).await {
                Ok(pinned) => spec.image = pinned,
                Err(why) => {
                    // The tag as pinned before stays pinned: a registry away
                    // for a moment is no reason to roll every task.
                    let before = now.map(|s| s.spec.image).filter(|i| super::pin::unpinned(i) == spec.image);
                    warnings.push(format!(
                        "image {} could not be resolved to a digest on its registry ({why}); {}",
                        spec.image,
                        match &before {
                            Some(i) => format!("it stays {i}"),
                            None => "each node pulls the tag itself, so replicas may run different images".into(),
                        }
                    ));
                    spec.image = before.unwrap_or(spec.image);
                }
            }
        }
        Ok((spec, warnings))
    }

    /// This server's own view of Raft.
    async fn local_status(&self) -> ClusterStatusReply {
        let m = self.node.metrics();
        let committed = self.node.raft.with_raft_state(|st| st.committed.map(|l| l.index)).await.ok().flatten();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                address: n.addr.clone(),
                role: match () {
                    _ if m.current_leader == Some(*id) => "leader",
                    _ if voters.contains(id) => "follower",
                    _ => "learner",
                }
                .into(),
                matched_index: m.replication.as_ref().and_then(|r| r.get(id).copied().flatten()).map(|l| l.index),
            })
            .collect();
        ClusterStatusReply {
            answered_by: m.id,
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index: committed,
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            members,
            reads: crate::state::READS,
            figures: self.node.applied.read().ok().map(|a| self.node.stats.figures(&a.state)),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn create_service(&self, req: Request<CreateServiceRequest>) -> Result<Response<ServiceReply>, Status> {
        self.allow(&req, Access::Operator, "creating a service")?;
        let CreateServiceRequest { spec, no_resolve_image } = req.into_inner();
        let (spec, warnings) = self.spec_in(spec, false, !no_resolve_image).await?;
        let (service, _) = self.write_service(Command::CreateService(spec)).await?;
        Ok(Response::new(ServiceReply { service: Some(service), endpoints: vec![], warnings }))
    }

    async fn update_service(&self, req: Request<UpdateServiceRequest>) -> Result<Response<ServiceReply>, Status> {
        self.allow(&req, Access::Operator, "updating a service")?;
        let UpdateServiceRequest { spec, no_resolve_image } = req.into_inner();
        let (spec, warnings) = self.spec_in(spec, true, !no_resolve_image).await?;
        let (service, _) = self.write_service(Command::UpdateService(spec)).await?;
        Ok(Response::new(ServiceReply { service: Some(service), endpoints: vec![], warnings }))
    }

    async fn scale_service(&self, req: Request<ScaleServiceRequest>) -> Result<Response<ServiceReply>, Status> {
        self.allow(&req, Access::Operator, "scaling a service")?;
        let ScaleServiceRequest { name, replicas } = req.into_inner();
        name_arg(&name)?;
        let max = berth_proto::model::MAX_REPLICAS;
        let replicas = u32::try_from(replicas)
            .ok()
            .filter(|r| *r <= max)
            .ok_or_else(|| invalid(InvalidField::new("replicas", replicas, format!("an integer from 0 to {max}"))))?;
        let cmd = if self.levels.cluster(&self.node).await.0 >= 1 {
            Command::ScaleService { name, replicas }
        } else {
            // A member of the release before: the spec as read now, with
            // the new count (a change meanwhile may be lost, as before).
            let spec = match self.node.read(Query::GetService(name.clone()), false).await? {
                QueryReply::Service(Some(s), _) => s.spec,
                QueryReply::Service(None, _) => return Err(crate::state::Rejection::NotFound(name).into()),
                other => return Err(Status::internal(format!("unexpected query reply {other:?}"))),
            };
            Command::UpdateService(berth_proto::model::ServiceSpec { replicas, ..spec })
        };
        let (service, _) = self.write_service(cmd).await?;
        Ok(Response::new(ServiceReply { service: Some(service), endpoints: vec![], warnings: vec![] }))
    }

    async fn apply_service(&self, req: Request<ApplyServiceRequest>) -> Result<Response<ApplyServiceReply>, Status> {
        self.allow(&req, Access::Operator, "applying a service")?;
        let ApplyServiceRequest { spec, no_resolve_image } = req.into_inner();
        let (spec, warnings) = self.spec_in(spec, true, !no_resolve_image).await?;
        let (service, outcome) = self.write_service(Command::ApplyService(spec)).await?;
        Ok(Response::new(ApplyServiceReply { service: Some(service), outcome, warnings }))
    }

    /// The previous spec, with the replicas as they are now, as an update
    /// (so it rolls out by the service's rollback config).
    async fn rollback_service(&self, req: Request<RollbackServiceRequest>) -> Result<Response<ServiceReply>, Status> {
        self.allow(&req, Access::Operator, "rolling back a service")?;
        let name = req.into_inner().name;
        name_arg(&name)?;
        let svc = match self.node.read(Query::GetService(name.clone()), false).await? {
            QueryReply::Service(Some(s), _) => s,
            QueryReply::Service(None, _) => return Err(crate::state::Rejection::NotFound(name).into()),
            other => return Err(Status::internal(format!("unexpected query reply {other:?}"))),
        };
        let Some(previous) = svc.previous else {
            return Err(Status::failed_precondition(format!(
                "service {name:?} has no previous spec to roll back to: what its tasks run has not changed since it was created"
            )));
        };
        let spec = berth_proto::model::ServiceSpec { replicas: svc.spec.replicas, ..*previous };
        let (service, _) = self.write_service(Command::UpdateService(spec)).await?;
        Ok(Response::new(ServiceReply { service: Some(service), endpoints: vec![], warnings: vec![] }))
    }

    async fn delete_service(&self, req: Request<DeleteServiceRequest>) -> Result<Response<DeleteServiceReply>, Status> {
        self.allow(&req, Access::Operator, "removing a service")?;
        let name = req.into_inner().name;
        name_arg(&name)?;
        match self.node.write(Command::DeleteService { name }).await? {
            Applied::Deleted => Ok(Response::new(DeleteServiceReply {})),
            Applied::Rejected(r) => Err(r.into()),
            other => Err(Status::internal(format!("unexpected state machine reply {other:?}"))),
        }
    }

    async fn get_service(&self, req: Request<GetServiceRequest>) -> Result<Response<ServiceReply>, Status> {
        self.allow(&req, Access::Read, "reading a service")?;
        let GetServiceRequest { name, stale } = req.into_inner();
        name_arg(&name)?;
        match self.node.read(Query::GetService(name.clone()), stale).await? {
            QueryReply::Service(Some(s), endpoints) => Ok(Response::new(ServiceReply {
                service: Some(s.into()),
                endpoints: endpoints.into_iter().map(Into::into).collect(),
                warnings: vec![],
            })),
            QueryReply::Service(None, _) => Err(crate::state::Rejection::NotFound(name).into()),
            other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
        }
    }

    async fn list_services(&self, req: Request<ListServicesRequest>) -> Result<Response<ListServicesReply>, Status> {
        self.allow(&req, Access::Read, "listing services")?;
        match self.node.read(Query::ListServices, req.get_ref().stale).await? {
            QueryReply::Services(list) => {
                Ok(Response::new(ListServicesReply { services: list.into_iter().map(Into::into).collect() }))
            }
            other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
        }
    }

    async fn cluster_status(&self, req: Request<ClusterStatusRequest>) -> Result<Response<ClusterStatusReply>, Status> {
        self.allow(&req, Access::Read, "reading the cluster status")?;
        // The leader knows roles and replication progress; ask it (one hop at
        // most), else answer for ourselves.
        let m = self.node.metrics();
        let forwarded = req.metadata().contains_key(FORWARDED) || req.get_ref().local;
        if let Some(leader) = m.current_leader.filter(|l| *l != self.node.id && !forwarded) {
            if let Some(node) = m.membership_config.membership().get_node(&leader) {
                if let Ok(channel) = self.node.peers.channel(&node.addr) {
                    let mut req = Request::new(ClusterStatusRequest { local: false });
                    req.set_timeout(Duration::from_secs(2));
                    req.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
                    if let Ok(reply) = ClusterClient::new(channel).cluster_status(req).await {
                        return Ok(reply);
                    }
                }
            }
        }
        Ok(Response::new(self.local_status().await))
    }

    async fn remove_member(&self, req: Request<RemoveMemberRequest>) -> Result<Response<RemoveMemberReply>, Status> {
        self.allow(&req, Access::Admin, "removing a server")?;
        self.node.run(LeaderOp::Remove { id: req.into_inner().id }).await?;
        Ok(Response::new(RemoveMemberReply {}))
    }

    async fn list_tasks(&self, req: Request<ListTasksRequest>) -> Result<Response<ListTasksReply>, Status> {
        self.allow(&req, Access::Read, "listing tasks")?;
        let ListTasksRequest { service, stale } = req.into_inner();
        name_arg(&service)?;
        match self.node.read(Query::ListTasks(service), stale).await? {
            QueryReply::Tasks(list) => {
                Ok(Response::new(ListTasksReply { tasks: list.into_iter().map(Into::into).collect() }))
            }
            other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
        }
    }

    async fn autolock(&self, req: Request<AutolockRequest>) -> Result<Response<AutolockReply>, Status> {
        self.allow(&req, Access::Admin, "autolock")?;
        Ok(Response::new(access::autolock(&self.node, req.into_inner()).await?))
    }

    type BackupStream = super::backup::Chunks;

    async fn backup(&self, req: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        self.allow(&req, Access::Admin, "taking a backup")?;
        let forwarded = req.metadata().contains_key(FORWARDED);
        Ok(Response::new(super::backup::backup(&self.node, forwarded).await?))
    }

    type ServiceLogsStream = Held<ReceiverStream<Result<LogLines, Status>>>;

    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        self.allow(&req, Access::Operator, "reading logs")?;
        let permit = self.watch(&req)?;
        let req = req.into_inner();
        name_arg(&req.service)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        streams::service_logs(&self.node, req, tx)?;
        Ok(Response::new(Held::new(ReceiverStream::new(rx), permit)))
    }

    type EventsStream = Held<ReceiverStream<Result<Event, Status>>>;

    async fn events(&self, req: Request<EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        self.allow(&req, Access::Read, "watching events")?;
        let permit = self.watch(&req)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(streams::events(self.node.clone(), tx));
        Ok(Response::new(Held::new(ReceiverStream::new(rx), permit)))
    }

    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesReply>, Status> {
        self.allow(&req, Access::Read, "listing nodes")?;
        match self.node.read(Query::ListNodes, req.get_ref().stale).await? {
            QueryReply::Nodes(list) => {
                Ok(Response::new(ListNodesReply { nodes: list.into_iter().map(Into::into).collect() }))
            }
            other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
        }
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeReply>, Status> {
        self.allow(&req, Access::Read, "reading a node")?;
        let GetNodeRequest { name, stale } = req.into_inner();
        let info = self.find_node(&name, stale).await?;
        Ok(Response::new(NodeReply { node: Some(info.into()) }))
    }

    async fn set_node_availability(
        &self,
        req: Request<SetNodeAvailabilityRequest>,
    ) -> Result<Response<NodeReply>, Status> {
        self.allow(&req, Access::Admin, "changing a node")?;
        let SetNodeAvailabilityRequest { name, availability } = req.into_inner();
        let availability = Availability::parse(&availability).ok_or_else(|| {
            Status::invalid_argument(format!("availability: {availability:?} is not valid: expected active or drain"))
        })?;
        let id = self.find_node(&name, false).await?.node.id;
        match self.node.write(Command::SetAvailability { id, availability }).await? {
            Applied::Node(node) => {
                let info = self.find_node(&node.id, false).await?;
                Ok(Response::new(NodeReply { node: Some(info.into()) }))
            }
            Applied::Rejected(r) => Err(r.into()),
            other => Err(Status::internal(format!("unexpected state machine reply {other:?}"))),
        }
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Result<Response<RemoveNodeReply>, Status> {
        self.allow(&req, Access::Admin, "removing a node")?;
        let id = self.find_node(&req.get_ref().name, false).await?.node.id;
        match self.node.write(Command::RemoveNode { id }).await? {
            Applied::Deleted => Ok(Response::new(RemoveNodeReply {})),
            Applied::Rejected(r) => Err(r.into()),
            other => Err(Status::internal(format!("unexpected state machine reply {other:?}"))),
        }
    }

    async fn create_secret(&self, req: Request<CreateFileRequest>) -> Result<Response<FileReply>, Status> {
        self.allow(&req, Access::Operator, "creating a secret")?;
        let reply = super::files::create(&self.node, &self.levels, FileKind::Secret, req.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn list_secrets(&self, req: Request<ListFilesRequest>) -> Result<Response<ListFilesReply>, Status> {
        self.allow(&req, Access::Read, "listing secrets")?;
        Ok(Response::new(super::files::list(&self.node, &self.levels, FileKind::Secret).await?))
    }

    async fn delete_secret(&self, req: Request<DeleteFileRequest>) -> Result<Response<DeleteFileReply>, Status> {
        self.allow(&req, Access::Operator, "removing a secret")?;
        let name = req.into_inner().name;
        Ok(Response::new(super::files::delete(&self.node, &self.levels, FileKind::Secret, name).await?))
    }

    async fn create_config(&self, req: Request<CreateFileRequest>) -> Result<Response<FileReply>, Status> {
        self.allow(&req, Access::Operator, "creating a config")?;
        let reply = super::files::create(&self.node, &self.levels, FileKind::Config, req.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn list_configs(&self, req: Request<ListFilesRequest>) -> Result<Response<ListFilesReply>, Status> {
        self.allow(&req, Access::Read, "listing configs")?;
        Ok(Response::new(super::files::list(&self.node, &self.levels, FileKind::Config).await?))
    }

    async fn get_config(&self, req: Request<GetConfigRequest>) -> Result<Response<GetConfigReply>, Status> {
        self.allow(&req, Access::Read, "reading a config")?;
        let name = req.into_inner().name;
        Ok(Response::new(super::files::get_config(&self.node, &self.levels, name).await?))
    }

    async fn delete_config(&self, req: Request<DeleteFileRequest>) -> Result<Response<DeleteFileReply>, Status> {
        self.allow(&req, Access::Operator, "removing a config")?;
        let name = req.into_inner().name;
        Ok(Response::new(super::files::delete(&self.node, &self.levels, FileKind::Config, name).await?))
    }

    async fn list_volumes(&self, req: Request<ListVolumesRequest>) -> Result<Response<ListVolumesReply>, Status> {
        self.allow(&req, Access::Read, "listing volumes")?;
        Ok(Response::new(super::volumes::list(&self.node, &self.levels, req.into_inner()).await?))
    }

    async fn delete_volume(&self, req: Request<DeleteVolumeRequest>) -> Result<Response<DeleteVolumeReply>, Status> {
        self.allow(&req, Access::Operator, "removing a volume")?;
        Ok(Response::new(super::volumes::delete(&self.node, &self.levels, req.into_inner()).await?))
    }

    async fn join_token(&self, req: Request<JoinTokenRequest>) -> Result<Response<JoinTokenReply>, Status> {
        self.allow(&req, Access::Admin, "managing join tokens")?;
        Ok(Response::new(access::join_token(&self.node, req.into_inner()).await?))
    }

    async fn add_user(&self, req: Request<AddUserRequest>) -> Result<Response<AddUserReply>, Status> {
        self.allow(&req, Access::Admin, "adding a user")?;
        Ok(Response::new(access::add_user(&self.node, req.into_inner()).await?))
    }

    async fn list_users(&self, req: Request<ListUsersRequest>) -> Result<Response<ListUsersReply>, Status> {
        self.allow(&req, Access::Admin, "listing users")?;
        Ok(Response::new(access::list_users(&self.node).await?))
    }

    async fn remove_user(&self, req: Request<RemoveUserRequest>) -> Result<Response<RemoveUserReply>, Status> {
        self.allow(&req, Access::Admin, "removing a user")?;
        Ok(Response::new(access::remove_user(&self.node, req.into_inner()).await?))
    }

    async fn rotate_ca(&self, req: Request<RotateCaRequest>) -> Result<Response<RotateCaReply>, Status> {
        self.allow(&req, Access::Admin, "rotating the cluster's CA")?;
        let user = super::auth::caller(&req)?;
        if user.role != berth_proto::pki::Role::User {
            return Err(Status::permission_denied("a CA rotation is asked by a user (an admin), not by a node"));
        }
        Ok(Response::new(access::rotate_ca(&self.node, &user, req.into_inner()).await?))
    }

    async fn ca_status(&self, req: Request<CaStatusRequest>) -> Result<Response<CaStatusReply>, Status> {
        self.allow(&req, Access::Read, "reading the CA's status")?;
        Ok(Response::new(access::ca_status(&self.node).await?))
    }
}

impl ClusterApi {
    /// A node by name or id.
    async fn find_node(&self, name: &str, stale: bool) -> Result<NodeInfo, Status> {
        match self.node.read(Query::GetNode(name.to_owned()), stale).await? {
            QueryReply::Node(Some(info)) => Ok(info),
            QueryReply::Node(None) => Err(crate::state::Rejection::NodeNotFound(name.to_owned()).into()),
            other => Err(Status::internal(format!("unexpected query reply {other:?}"))),
        }
    }
}

/// The level every member must read before `spec` may be written (what a
/// server of an older release would drop from its state), and what needs it.
fn needed_level(spec: &model::ServiceSpec) -> (u32, &'static str) {
    let options = &spec.overrides.options;
    // The highest level any field needs.
    if spec.uses_stacks() {
        return (3, "stacks (STACK_SERVICE names) and depends_on");
    }
    if !options.mounts.is_empty() || !options.secrets.is_empty() || !options.configs.is_empty() {
        return (2, "volumes, bind mounts, secrets and configs");
    }
    let placed = model::Placement { rebalance: true, ..(*spec.placement).clone() };
    let first = spec.mode == model::Mode::Global
        || placed != model::Placement::default()
        || spec.overrides.options.pull != model::Pull::Missing
        || spec.overrides.init;
    match first {
        true => (1, "mode: global, placement (spread, max_replicas_per_node), pull and init"),
        false => (0, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_an_older_server_would_drop_wait_for_the_level_that_reads_them() {
        let spec = |edit: &dyn Fn(&mut ServiceSpec)| {
            let mut w = ServiceSpec { name: "web".into(), image: "busybox".into(), replicas: 1, ..Default::default() };
            edit(&mut w);
            needed_level(&spec_from_request(Some(w)).unwrap()).0
        };
        assert_eq!(spec(&|_| {}), 0);
        assert_eq!(spec(&|w| (w.mode, w.replicas) = ("global".into(), 0)), 1);
        let mount = berth_proto::pb::cluster::Mount {
            r#type: "volume".into(),
            source: "data".into(),
            target: "/data".into(),
            ..Default::default()
        };
        let options = berth_proto::pb::cluster::Options { mounts: vec![mount], ..Default::default() };
        let overrides = berth_proto::pb::cluster::Overrides { options: Some(options), ..Default::default() };
        assert_eq!(spec(&|w| w.overrides = Some(overrides.clone())), 2);
        assert_eq!(spec(&|w| w.name = "shop_web".into()), 3, "a stack's service");
        let with_mount = Some(overrides.clone());
        assert_eq!(spec(&|w| (w.name, w.overrides) = ("shop_db".into(), with_mount.clone())), 3, "the highest level");
        let dependency = berth_proto::pb::cluster::Dependency { service: "db".into(), condition: String::new() };
        let options = berth_proto::pb::cluster::Options { depends_on: vec![dependency], ..Default::default() };
        let overrides = berth_proto::pb::cluster::Overrides { options: Some(options), ..Default::default() };
        assert_eq!(spec(&|w| w.overrides = Some(overrides.clone())), 3);
    }
}
