//! Every configured provider and group, by the name callers use, and the simulated CDNs behind
//! sandbox providers (which tests and demos read).

use std::sync::Arc;

// Keyed by configured names, so the fast hasher: the map is read several times per request.
use foldhash::HashMap;

use super::sandbox::Sandbox;
use super::{Provider, ProviderHandle};

/// Every configured provider and group, by the name callers use.
#[derive(Clone, Default)]
pub struct Registry {
    providers: HashMap<String, ProviderHandle>,
    groups: HashMap<String, Vec<String>>,
    sandboxes: HashMap<String, Sandbox>,
}

impl Registry {
    pub fn insert(&mut self, handle: ProviderHandle) {
        self.providers.insert(handle.name.clone(), handle);
    }

    pub fn insert_sandbox(&mut self, name: &str, sandbox: Sandbox) {
        self.sandboxes.insert(name.to_owned(), sandbox);
    }

    pub fn insert_group(&mut self, name: String, members: Vec<String>) {
        self.groups.insert(name, members);
    }

    pub fn get(&self, name: &str) -> Option<&ProviderHandle> {
        self.providers.get(name)
    }

    /// A provider name resolves to itself, a group name to its members.
    pub fn resolve(&self, name: &str) -> Option<Vec<&ProviderHandle>> {
        if let Some(p) = self.providers.get(name) {
            return Some(vec![p]);
        }
        let members = self.groups.get(name)?;
        members.iter().map(|m| self.providers.get(m)).collect()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .providers
            .keys()
            .chain(self.groups.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Replaces every provider's client with `wrap(name, client)` (a measuring decorator).
    pub fn wrap_clients(&mut self, wrap: impl Fn(&str, Arc<dyn Provider>) -> Arc<dyn Provider>) {
        for h in self.providers.values_mut() {
            h.client = wrap(&h.name, h.client.clone());
        }
    }

    pub fn handles(&self) -> impl Iterator<Item = &ProviderHandle> {
        self.providers.values()
    }

    /// The simulated CDN behind a sandbox provider, for tests and demos.
    pub fn sandbox(&self, name: &str) -> Option<&Sandbox> {
        self.sandboxes.get(name)
    }
}
