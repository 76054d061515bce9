//! Microsoft Entra: app-only tokens from the identity platform, and the Graph directory reads decisions need.

mod certificate;
mod config;
mod graph;
mod token;

pub use certificate::{AssertionAlgorithm, CertificateCredential, CertificateError, JWT_BEARER_ASSERTION_TYPE};
pub use config::{Entra, EntraConfig};
pub use graph::{DEFAULT_GRAPH_URL, EntraGroup, EntraUser, GraphDirectory, GraphError};
pub use token::{ARM_RESOURCE, Credential, DEFAULT_AUTHORITY, GRAPH_RESOURCE, TokenProvider, scope_for};
