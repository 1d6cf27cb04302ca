//! The authorize stage: whether this caller may call the tool (the one policy function,
//! `ConfigView::tool_allowed`, that `tools/list` filters by too), and its rate limits.

use std::sync::Arc;

use shared::server::ServerSpec;

use crate::auth::Principal;
use crate::catalog::ConfigView;
use crate::gateway::GatewayService;
use crate::rate_limit::Limited;
use crate::telemetry;

/// The server and upstream tool behind `name` as the client sees it, if the caller's config
/// allows it.
pub(crate) fn route<'c>(config: &'c ConfigView, name: &'c str) -> Option<(&'c Arc<ServerSpec>, &'c str)> {
    let mut policy = telemetry::Stage::start("policy", Vec::new);
    let routed = config.route_tool(name).filter(|(spec, tool)| config.tool_allowed(&spec.server_name, tool));
    policy.decision(if routed.is_some() { "allowed" } else { "denied" });
    routed
}

/// Whether the caller's config allows `tool` (its upstream name) of `spec`.
pub(crate) fn allowed(config: &ConfigView, spec: &ServerSpec, tool: &str) -> bool {
    let mut policy = telemetry::Stage::start("policy", Vec::new);
    let allowed = !tool.is_empty() && config.tool_allowed(&spec.server_name, tool);
    policy.decision(if allowed { "allowed" } else { "denied" });
    allowed
}

/// Asks the rate limits that apply for one call; a refusal is counted and audited.
pub(crate) async fn admit(
    svc: &GatewayService,
    p: &Principal,
    config: &ConfigView,
    spec: &ServerSpec,
    tool: &str,
) -> Result<(), Limited> {
    let limits = crate::rate_limit::applicable(p, config, spec, tool);
    let gateway = &svc.gateway;
    gateway.rate_limiter.admit(&limits, &gateway.metrics).await.inspect_err(|limited| refused(svc, p, limited))
}

/// Counts and audits a call that `limited` refused.
pub(crate) fn refused(svc: &GatewayService, p: &Principal, limited: &Limited) {
    svc.gateway.metrics.record_rate_limited(&p.project_name, limited.kind);
    svc.gateway.audit.record_rate_limited(p, limited);
}
