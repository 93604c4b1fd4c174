//! Provider fakes: real HTTP servers implementing the documented APIs, verifying signatures
//! with their own code, enforcing limits and recording every request.

pub mod akamai;
pub mod cdnetworks;
pub mod cloudflare;
pub mod cloudfront;
pub mod edgeone;
pub mod fastly;
pub mod sts;
