//! The credit ledger service as a library: the binary (`main.rs`) and the
//! integration tests start it through [`app::serve`].

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod entity;
pub mod gate;
pub mod ledger;
pub mod relay;
pub mod service;
pub mod telemetry;
