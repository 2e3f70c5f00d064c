//! The MCP server: one [`McpServer`] per handshake-era MCP session, or per
//! request for 2026-07-28 clients (which have no sessions).
//!
//! Binding: an MCP client speaks for one Bulkhead session of its principal.
//! `initialize` binds it: to the session named by the `Bulkhead-Session`
//! header (which the principal must own), or to a new session with the
//! principal's default boundary. Clients without a handshake name their
//! session with the header on every request. Every later request must come
//! with a token of the same principal, and the session is re-read each
//! time, so a narrowed, expired or deleted session takes effect at once.

use super::{SESSION_HEADER, results, tasks};
use crate::auth::Principal;
use crate::model::{CallStatus, Session};
use crate::service::calls::{CallOptions, NewCall};
use crate::service::sessions::CreateSession;
use crate::service::{Service, ServiceError};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CancelTaskParams, CreateTaskResult, GetTaskParams,
    GetTaskResult, Implementation, InitializeRequestParams, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// `_meta` key of a `tools/call` carrying an idempotency key (1–255 bytes).
pub const IDEMPOTENCY_META: &str = "bulkhead/idempotency_key";

pub struct McpServer {
    service: Arc<Service>,
    defaults: Arc<super::defaults::Defaults>,
    /// Set by `initialize`: the session this MCP session speaks for.
    bound: OnceLock<Binding>,
}

struct Binding {
    principal: String,
    session: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallResultArgs {
    call_id: String,
    #[serde(default)]
    wait_seconds: u64,
}

impl McpServer {
    pub fn new(service: Arc<Service>, defaults: Arc<super::defaults::Defaults>) -> McpServer {
        McpServer { service, defaults, bound: OnceLock::new() }
    }

    /// The caller's principal and the session it names with the header.
    fn caller(ctx: &RequestContext<RoleServer>) -> Result<(Arc<Principal>, Option<String>), McpError> {
        let parts = ctx.extensions.get::<http::request::Parts>();
        let principal = parts.and_then(|p| p.extensions.get::<Arc<Principal>>()).cloned();
        // The route's middleware always sets it; without it nothing is served.
        let principal = principal.ok_or_else(|| McpError::invalid_request("not authenticated", None))?;
        let named = match parts.and_then(|p| p.headers.get(SESSION_HEADER)) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| McpError::invalid_params("the Bulkhead-Session header is not a session id", None))?
                    .trim()
                    .to_string(),
            ),
        };
        Ok((principal, named))
    }

    /// The session this request speaks for, re-read from the store.
    async fn session(&self, ctx: &RequestContext<RoleServer>) -> Result<(Arc<Principal>, Session), McpError> {
        let (p, named) = Self::caller(ctx)?;
        let sid = match (self.bound.get(), named) {
            (Some(b), _) if b.principal != p.name => {
                return Err(McpError::invalid_request("this MCP session belongs to another principal", None));
            }
            (Some(b), Some(named)) if named != b.session => {
                return Err(McpError::invalid_params(
                    "the Bulkhead-Session header names another session than this MCP session's",
                    None,
                ));
            }
            (Some(b), _) => b.session.clone(),
            (None, Some(named)) => named,
            // No handshake and no session named: the principal's default.
            (None, None) => {
                let session = self.defaults.session(&self.service, &p).await.map_err(protocol_error)?;
                return Ok((p, session));
            }
        };
        let session = self.service.owned_session(&p, &sid).await.map_err(protocol_error)?;
        Ok((p, session))
    }
}

/// Session and storage failures are protocol errors: no tool ran.
fn protocol_error(e: ServiceError) -> McpError {
    if let ServiceError::Unavailable(detail) = &e {
        tracing::error!("storage unavailable: {detail}");
    }
    let data = Some(json!({ "code": e.code() }));
    match e {
        ServiceError::Unavailable(_) | ServiceError::Busy => McpError::internal_error(e.to_string(), data),
        _ => McpError::invalid_params(e.to_string(), data),
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("bulkhead", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Bulkhead runs each tool in a sandbox with its own durable state. Calls that need a human \
                 decision answer status pending_approval (or, for clients declaring the tasks extension, a task \
                 whose id is the call id); wait for them with bulkhead_call_result or tasks/get.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        let mut result = self.negotiate_initialize(&request)?;
        let (p, named) = Self::caller(&context)?;
        if self.bound.get().is_some() {
            return Err(McpError::invalid_request("this MCP session is already initialized", None));
        }
        let session = match named {
            Some(sid) => self.service.owned_session(&p, &sid).await.map_err(protocol_error)?,
            None => {
                let labels = BTreeMap::from([("created_by".to_string(), "mcp".to_string())]);
                let req = CreateSession { labels, ..CreateSession::default() };
                self.service.create_session(&p, req).await.map_err(protocol_error)?
            }
        };
        let binding = Binding { principal: p.name.clone(), session: session.id.clone() };
        if self.bound.set(binding).is_err() {
            return Err(McpError::invalid_request("this MCP session is already initialized", None));
        }
        context.peer.set_peer_info(request);
        result.meta = Some(results::meta(json!({ "bulkhead/session": session.id })));
        Ok(result)
    }

    /// Watches what this client's tool list is made of: a reload that
    /// changes one of its tools, or its session narrowed, sends
    /// `notifications/tools/list_changed` (on the client's GET stream).
    async fn on_initialized(&self, context: rmcp::service::NotificationContext<RoleServer>) {
        let Some(bound) = self.bound.get() else { return };
        let (service, peer, sid) = (self.service.clone(), context.peer.clone(), bound.session.clone());
        tokio::spawn(async move {
            let mut tools = service.subscribe_tools();
            let mut narrowed = service.subscribe_narrowed();
            let read = |service: &Arc<Service>, sid: &str| {
                let (service, sid) = (service.clone(), sid.to_string());
                async move { service.store.session(&sid).await.ok().flatten() }
            };
            let Some(mut session) = read(&service, &sid).await else { return };
            let mut listing = service.listing_of(&session);
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
            loop {
                tokio::select! {
                    changed = tools.changed() => if changed.is_err() { return },
                    id = narrowed.recv() => match id {
                        Ok(id) if id == sid => {}
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    },
                    // The client went away without a change to tell it.
                    _ = tick.tick() => if peer.is_transport_closed() { return } else { continue },
                }
                let Some(now) = read(&service, &sid).await else { return };
                let now_listing = service.listing_of(&now);
                if now_listing == listing && now.tools == session.tools {
                    continue;
                }
                (session, listing) = (now, now_listing);
                if peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        });
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, McpError> {
        let (_, session) = self.session(&context).await?;
        Ok(rmcp::model::ListResourcesResult::with_all_items(super::resources::list(&session)))
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, McpError> {
        let (p, session) = self.session(&context).await?;
        match super::resources::read(&self.service, &p, &session, &request.uri).await {
            Some(Ok(contents)) => Ok(rmcp::model::ReadResourceResult::new(vec![contents]).into()),
            Some(Err(e)) => Err(protocol_error(e)),
            None => {
                let uri: String = request.uri.chars().take(200).collect();
                Err(McpError::resource_not_found(format!("no resource {uri:?} in this session"), None))
            }
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (_, session) = self.session(&context).await?;
        let mut tools: Vec<_> = session
            .tools
            .iter()
            .filter_map(|(name, boundary)| {
                self.service.tool(name).map(|t| results::tool(&t, &Service::effective_boundary(&t, boundary)))
            })
            .collect();
        tools.push(results::call_result_tool());
        let mut list = ListToolsResult::with_all_items(tools).with_ttl_ms(0);
        // The list is this session's boundary, which PATCH can narrow.
        list.cache_scope = Some(CacheScope::Private);
        list.meta = Some(results::meta(json!({ "bulkhead/session": session.id })));
        Ok(list)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let (p, session) = self.session(&context).await?;
        let input = request.arguments.map(Value::Object).unwrap_or_else(|| json!({}));
        if request.name == results::CALL_RESULT_TOOL {
            let args: CallResultArgs = match serde_json::from_value(input) {
                Ok(args) => args,
                Err(e) => {
                    let e = ServiceError::BadRequest { code: "invalid_input", message: format!("input: {e}") };
                    return Ok(results::refused(&e).into());
                }
            };
            let wait = Some(args.wait_seconds.min(results::MAX_WAIT_SECONDS));
            return Ok(match self.service.get_call(&p, &session.id, &args.call_id, wait).await {
                Ok(call) => results::call(&call).into(),
                Err(e) => results::refused(&e).into(),
            });
        }
        // A tool outside the boundary is unknown here, as in tools/list.
        if !session.tools.contains_key(request.name.as_ref()) {
            let name: String = request.name.chars().take(64).collect();
            return Err(McpError::invalid_params(
                format!("unknown tool {name:?}"),
                Some(json!({ "code": "tool_not_allowed" })),
            ));
        }
        let key = request.meta.as_ref().unwrap_or(&context.meta).0.0.get(IDEMPOTENCY_META);
        let idempotency_key = match key {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => {
                return Err(McpError::invalid_params(format!("_meta.{IDEMPOTENCY_META} must be a string"), None));
            }
        };
        let call = NewCall { tool: request.name.to_string(), input, idempotency_key };
        let tasks = context.client_capabilities().is_some_and(|c| c.supports_tasks());
        Ok(match self.service.call(&p, &session.id, call, CallOptions::default()).await {
            // A client that declares tasks gets the wait for a human as a
            // task it polls with tasks/get, instead of a result to re-ask.
            Ok(reply) if tasks && reply.call.status == CallStatus::PendingApproval => {
                CallToolResponse::Task(CreateTaskResult::new(tasks::task(&reply.call)))
            }
            Ok(reply) => results::call(&reply.call).into(),
            Err(e) => results::refused(&e).into(),
        })
    }

    /// A task is a call of this session: working while it waits for a
    /// decision or runs, completed with its tool result once it ended.
    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let (p, session) = self.session(&context).await?;
        match self.service.get_call(&p, &session.id, &request.task_id, None).await {
            Ok(call) => Ok(GetTaskResult::new(tasks::detailed(&call))),
            Err(ServiceError::NotFound { .. }) => {
                Err(McpError::invalid_params("no such task in this session", Some(json!({ "code": "not_found" }))))
            }
            Err(e) => Err(protocol_error(e)),
        }
    }

    /// Only an approver ends a wait for a decision (by rejecting it).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let (p, session) = self.session(&context).await?;
        self.service.get_call(&p, &session.id, &request.task_id, None).await.map_err(protocol_error)?;
        Err(McpError::invalid_request(
            "a Bulkhead call cannot be cancelled by its agent: an approver decides a pending call",
            Some(json!({ "code": "not_cancellable" })),
        ))
    }
}
