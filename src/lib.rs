//! A CNI server on a root-only Unix socket.
//!
//! On a Kubernetes node the container runtime execs a CNI plugin for every
//! pod. With this crate the plugin is a thin shim: it sends its environment
//! and the netconf from its stdin, as JSON over HTTP/1.1 on a Unix socket,
//! to a long-lived server that does the work and answers. This is the
//! server side (and the client side the shim uses), a re-implementation of
//! OpenShift SDN's Go package `cniserver` that keeps its wire behaviour.
//!
//! One thread runs a mio reactor over the socket; requests are parsed with
//! httparse, decoded into [`PodRequest`]s and handed to a handler with a
//! [`ReplyHandle`] that may be answered from any thread.
//!
//! # Where things are
//!
//! - [`server`]: the reactor, reply handles, limits, metrics, shutdown.
//! - [`http`]: the HTTP/1.1 codec, pure functions over bytes.
//! - [`cni`]: commands, the request on the wire and its decoding.
//! - [`socket`]: the socket's folder and file and their safety rules.
//! - [`settings`]: `config.json` beside the socket; atomic file writes.
//! - [`client`], [`shim`]: the shim's side, behind `cniserver-shim`.
//! - [`daemon`]: the thick-plugin daemon behind `cniserverd`.
//! - [`reference`](mod@reference): the protocol's reference handler, for tests and
//!   benchmarks.
//!
//! # Security
//!
//! The socket lives in a folder of mode 0700 and has mode 0600, so only its
//! owner (root on a node) can connect, and each connection's peer uid is
//! checked again ([`PeerPolicy`]). The request carries the shim's whole
//! environment, which may hold secrets: nothing in this crate logs
//! environment values, and `Debug` of an [`Env`] shows names only. The one
//! protocol text that quotes part of it is the Go server's
//! `invalid CNI_ARG '<piece>'`.
//!
//! # Examples
//!
//! ```no_run
//! use cniserver::{reference, Server};
//!
//! let server = Server::bind("/run/example/cni.sock")?;
//! let stop = server.shutdown_handle();
//! // Another thread may call `stop.shutdown()`.
//! server.serve(|request, reply| reply.send(reference::answer(&request)))?;
//! # drop(stop);
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]

pub mod base64;
pub mod client;
pub mod cni;
pub mod daemon;
pub mod http;
pub mod reference;
pub mod server;
pub mod settings;
pub mod shim;
pub mod socket;

pub use cni::{
    decode_body, CniRequest, Command, DecodeError, Env, PodRequest, DEFAULT_SOCKET_PATH,
};
pub use server::{
    shutdown_on_signals, EventHook, PeerPolicy, PodError, PodResult, ReplyHandle, Server,
    ServerConfig, ServerEvent, ShutdownHandle,
};

// The README's Rust examples compile as doctests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
