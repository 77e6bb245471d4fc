//! What the alert sinks send, decided without I/O (docs/sinks.md): a webhook's Standard
//! Webhooks signature ([`webhook`]), a chat message or digest for Telegram and Discord
//! ([`chat`]), and what a receiver's answer means for the delivery ([`reply`]). The root crate's
//! `sinks` reads the log, posts, waits and keeps the cursors; every rule it follows is here,
//! unit-tested with bytes.

pub mod chat;
pub mod reply;
pub mod webhook;
