//! Provider fakes: real HTTP servers implementing the documented APIs, verifying signatures
//! with their own code, enforcing limits and recording every request.

pub mod cdnetworks;
pub mod cloudflare;
pub mod edgeone;
pub mod fastly;
