//! veil's demo serving container: a small static HTTP server that classifies inputs with a
//! two-layer perceptron read from a safetensors file, plus the generator of the demo model and a
//! client for tests.
//!
//! In a veil pod the model file sits in a tmpfs volume in guest RAM, put there by the agent after
//! attestation; this server only reads it. See the crate README for the model format and API.

pub mod client;
pub mod demo;
pub mod format;
pub mod model;
pub mod problem;
pub mod routes;
pub mod server;
pub mod train;

pub use client::{query_prediction, wait_until_healthy, QueryError};
pub use demo::{write_demo_model, DemoModelOptions, WriteDemoModelError, WrittenModel};
pub use model::{LoadModelError, Model, ModelInfo, PredictError, Prediction};
pub use server::{ModelServer, ServeError};
