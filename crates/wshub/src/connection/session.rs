//! A `wshub.v1` connection's commands: what each does, and the subscriptions it holds.
//!
//! The connection hands every inbound frame here instead of to the application's handler
//! when the client chose the `wshub.v1` subprotocol. A bad command gets an error reply and
//! the connection carries on. Replies go into the connection's own outbox, in order with
//! the pushes, so a subscribe reply always comes before the channel's next publication.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::auth::{AuthError, Identity};
use crate::broker::{Member, StreamPosition};
use crate::channels::protocol::{self, Command, ProtocolError};
use crate::channels::{AddError, push_or_evict};
use crate::hub::{Hub, Registration};
use crate::message::{CloseReason, Message};

/// The subscriptions of one `wshub.v1` connection, and who it is.
#[derive(Default)]
pub(crate) struct Session {
    subscriptions: HashSet<Arc<str>>,
    /// The verified token's identity (from the upgrade request or `connect`).
    identity: Option<Box<Identity>>,
    /// Authentication is required and `connect` has not come yet.
    pending: bool,
}

const COMMANDS: &str = "connect, refresh, subscribe, unsubscribe, publish, presence, history, ping";

impl Session {
    pub(crate) fn new(identity: Option<Box<Identity>>, pending: bool) -> Session {
        Session {
            subscriptions: HashSet::new(),
            identity,
            pending,
        }
    }

    /// The user, when the connection has a verified identity.
    pub(crate) fn user(&self) -> Option<Arc<str>> {
        self.identity.as_ref().map(|identity| identity.user.clone())
    }

    /// `connect` and `refresh`: checks the token; `Ok` is the reply.
    fn authenticate(
        &mut self,
        hub: &Hub,
        registration: &Registration,
        command: &Command,
    ) -> Result<String, ProtocolError> {
        let Some(verifier) = hub.auth() else {
            return Err(ProtocolError::new(
                400,
                format!(
                    "`{}`: this hub does not authenticate (no jwt_* key)",
                    command.cmd
                ),
            ));
        };
        let token = command
            .token
            .as_deref()
            .ok_or_else(|| ProtocolError::new(400, format!("`{}` needs a `token`", command.cmd)))?;
        let refreshing = command.cmd == "refresh";
        if !refreshing && self.identity.is_some() {
            return Err(ProtocolError::new(
                409,
                "already connected: send `refresh` to renew the token",
            ));
        }
        if refreshing && self.identity.is_none() {
            return Err(ProtocolError::new(
                409,
                "not connected with a token: send `connect`",
            ));
        }
        let identity = match verifier.verify(token) {
            Ok(identity) => identity,
            // A bad token in `connect` ends the connection; in `refresh`, the old one
            // stays good until its `exp`.
            Err(error) if refreshing => {
                return Err(ProtocolError::new(401, format!("refresh refused: {error}")));
            }
            Err(AuthError::Expired) => {
                registration
                    .outbox
                    .close(CloseReason::new(4002, "token expired"));
                return Err(ProtocolError::new(401, "token expired"));
            }
            Err(AuthError::Invalid(why)) => {
                registration
                    .outbox
                    .close(CloseReason::new(4001, format!("unauthorized: {why}")));
                return Err(ProtocolError::new(401, format!("unauthorized: {why}")));
            }
        };
        if let Some(current) = &self.identity
            && current.user != identity.user
        {
            return Err(ProtocolError::new(
                403,
                format!(
                    "refresh with another user's token (`{}`, connected as `{}`)",
                    identity.user, current.user
                ),
            ));
        }
        match identity.expires_at {
            Some(at) => hub.set_deadline(
                registration.id,
                super::instant_of(at),
                4002,
                "token expired",
            ),
            None => hub.clear_deadline(registration.id),
        }
        let expires_in = identity
            .expires_in()
            .map_or_else(|| "null".to_owned(), |s| s.to_string());
        let reply = if refreshing {
            format!(r#"{{"expires_in":{expires_in}}}"#)
        } else {
            format!(
                r#"{{"user":{},"expires_in":{expires_in}}}"#,
                serde_json::Value::from(&*identity.user)
            )
        };
        self.identity = Some(Box::new(identity));
        self.pending = false;
        Ok(reply)
    }

    /// Answers a command the connection's budget refused (`client_rate`): error 429 with
    /// the command's id, when it has one; the command is not run.
    pub(crate) fn over_budget(&self, registration: &Registration, frame: &Message, rate: u32) {
        let id = frame.as_text().and_then(protocol::id_of);
        let error = ProtocolError::new(
            429,
            format!("rate limit: {rate} messages per second (client_rate)"),
        );
        push_or_evict(&registration.outbox, protocol::error(id.as_deref(), &error));
    }

    /// Runs one inbound frame as a command and queues the reply.
    pub(crate) async fn handle(&mut self, hub: &Hub, registration: &Registration, frame: Message) {
        let reply = match frame.as_text() {
            None => protocol::error(
                None,
                &ProtocolError::new(
                    400,
                    "binary frames are not wshub.v1 commands: send JSON text",
                ),
            ),
            Some(text) => match protocol::parse(text) {
                Err((id, error)) => protocol::error(id.as_deref(), &error),
                Ok(command) => {
                    let id = command.id.clone();
                    match self.run(hub, registration, command).await {
                        Ok(Some(result)) => protocol::reply(id.as_deref(), &result),
                        Ok(None) => return, // subscribe queued its own reply
                        Err(error) => protocol::error(id.as_deref(), &error),
                    }
                }
            },
        };
        push_or_evict(&registration.outbox, reply);
    }

    async fn run(
        &mut self,
        hub: &Hub,
        registration: &Registration,
        command: Command,
    ) -> Result<Option<String>, ProtocolError> {
        if matches!(command.cmd.as_str(), "connect" | "refresh") {
            return self.authenticate(hub, registration, &command).map(Some);
        }
        if self.pending {
            return Err(ProtocolError::new(
                401,
                format!(
                    "`{}` before `connect`: send {{\"cmd\": \"connect\", \"token\": \"…\"}} first",
                    command.cmd
                ),
            ));
        }
        let channel = || {
            command.channel.as_deref().ok_or_else(|| {
                ProtocolError::new(400, format!("`{}` needs a `channel`", command.cmd))
            })
        };
        match command.cmd.as_str() {
            "ping" => Ok(Some("{}".to_owned())),
            "subscribe" => {
                let channel = channel()?;
                self.check_subscribe(hub, channel)?;
                let limit = hub.config().max_subscriptions;
                if limit > 0 && self.subscriptions.len() >= limit {
                    return Err(ProtocolError::new(
                        429,
                        format!("too many subscriptions: {limit} (max_subscriptions)"),
                    ));
                }
                let since = command.since.map(StreamPosition::from);
                self.subscribe(
                    hub,
                    registration,
                    channel,
                    since,
                    command.presence_events,
                    command.id.as_deref(),
                )
                .await?;
                Ok(None)
            }
            "unsubscribe" => {
                let channel = channel()?;
                if !self.subscriptions.remove(channel) {
                    return Err(ProtocolError::new(
                        409,
                        format!("not subscribed to `{channel}`"),
                    ));
                }
                hub.leave_channel(channel, registration.id, self.user())
                    .await;
                Ok(Some("{}".to_owned()))
            }
            "publish" => {
                let channel = channel()?;
                hub.check_channel_name(channel)?;
                match self.identity.as_ref().and_then(|i| i.may_publish(channel)) {
                    Some(true) => {}
                    Some(false) => {
                        return Err(ProtocolError::new(
                            403,
                            format!("your token's `publish` does not admit `{channel}`"),
                        ));
                    }
                    None if !hub.config().client_publish => {
                        return Err(ProtocolError::new(
                            403,
                            "clients may not publish here (client_publish = false)",
                        ));
                    }
                    None => {}
                }
                let data = command
                    .data
                    .ok_or_else(|| ProtocolError::new(400, "`publish` needs `data`"))?;
                let position = hub.publish(channel, &*data).await?;
                Ok(Some(protocol::position(&position, "")))
            }
            "presence" => {
                let channel = channel()?;
                let members = hub.presence(channel).await?;
                Ok(Some(protocol::members(&members)))
            }
            "history" => {
                let channel = channel()?;
                let since = command.since.map(StreamPosition::from);
                let asked = since.is_some();
                let history = hub.history(channel, since, command.limit).await?;
                let recovered = if asked {
                    format!(r#","recovered":{}"#, history.recovered)
                } else {
                    String::new()
                };
                let extra = format!("{recovered}{}", protocol::publications(channel, &history));
                Ok(Some(protocol::position(&history.position, &extra)))
            }
            other => Err(ProtocolError::new(
                405,
                format!("unknown command `{other}`; expected one of {COMMANDS}"),
            )),
        }
    }

    /// Channel rules for a subscription: the name, then the token's `channels` when it
    /// has them (403), else the config's `channels` (404).
    fn check_subscribe(&self, hub: &Hub, channel: &str) -> Result<(), ProtocolError> {
        match self
            .identity
            .as_ref()
            .and_then(|i| i.may_subscribe(channel))
        {
            Some(true) => hub.check_channel_name(channel),
            Some(false) => {
                hub.check_channel_name(channel)?;
                Err(ProtocolError::new(
                    403,
                    format!("your token's `channels` do not admit `{channel}`"),
                ))
            }
            None => hub.check_channel(channel),
        }
    }

    async fn subscribe(
        &mut self,
        hub: &Hub,
        registration: &Registration,
        channel: &str,
        since: Option<StreamPosition>,
        presence_events: bool,
        id: Option<&RawValue>,
    ) -> Result<(), ProtocolError> {
        let channels = hub.channel_registry();
        let broker = hub.broker();
        let first = channels
            .add(
                channel,
                registration.id,
                registration.outbox.clone(),
                presence_events,
            )
            .map_err(|AddError::AlreadySubscribed| {
                ProtocolError::new(409, format!("already subscribed to `{channel}`"))
            })?;
        let asked = since.is_some();
        // Two calls, each timed and counted on its own.
        let history = async {
            if first {
                hub.broker_call(broker.subscribe(channel)).await?;
            }
            hub.broker_call(broker.history(channel, since, None)).await
        }
        .await;
        let history = match history {
            Ok(history) => history,
            Err(error) => {
                channels.remove(channel, registration.id);
                return Err(error);
            }
        };
        if asked {
            hub.metrics().recovery(history.recovered);
        }
        let extra = if asked {
            format!(
                r#","recovered":{}{}"#,
                history.recovered,
                protocol::publications(channel, &history)
            )
        } else {
            String::new()
        };
        let reply = protocol::reply(id, &protocol::position(&history.position, &extra));
        let delivered = channels.go_live(channel, registration.id, &history, reply);
        hub.metrics().deliveries(delivered);
        self.subscriptions.insert(channel.into());
        let member = Member {
            user: self.user(),
            ..Member::local(registration.id)
        };
        if let Err(error) = broker.join(channel, member).await {
            tracing::warn!(%error, channel, "presence join failed");
        }
        Ok(())
    }

    /// Leaves every channel (the connection has ended).
    pub(crate) async fn end(self, hub: &Hub, registration: &Registration) {
        let user = self.user();
        for channel in self.subscriptions {
            hub.leave_channel(&channel, registration.id, user.clone())
                .await;
        }
    }
}
