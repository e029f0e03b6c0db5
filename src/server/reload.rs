//! Reload: SIGHUP or a changed `{ file = … }` secret reads the configuration again and switches
//! to it without dropping connections. Everything that can fail (validation, binding a moved
//! listener, building a client) happens before anything changes; a refused reload leaves the
//! running configuration as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::accept::{close, spawn_upstream_acceptor};
use super::{
    bind, local_addr, same_shared_cache, shared_cache, Accepted, Sidecar, Slot, StartError,
};
use crate::config::Config;
use crate::secret::{LoadedSecret, Secret};

/// How often `{ file = … }` secrets are compared with the values in use.
const SECRET_POLL: Duration = Duration::from_secs(1);

impl Sidecar {
    /// The `{ file = … }` secrets in use, with their values, for the watcher.
    pub(super) fn file_secrets(&self) -> Vec<LoadedSecret> {
        self.config.file_secrets().into_iter().cloned().collect()
    }

    /// Loads the configuration again and applies it; a configuration that fails validation or
    /// cannot be bound is refused and the running one stays.
    pub(super) async fn reload(
        &mut self,
        why: &str,
        acceptors: &mut BTreeMap<String, JoinHandle<()>>,
        tx: &mpsc::Sender<Accepted>,
    ) -> bool {
        // Reading the file and every secret is blocking I/O: keep it off the accept loop.
        let (path, text) = (self.path.clone(), self.config.text.clone());
        let loaded = tokio::task::spawn_blocking(move || match path {
            Some(path) => Config::load(&path),
            None => Config::from_toml(text.as_str()),
        })
        .await;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                // Only a panic or a runtime shutting down gets here: nothing was loaded.
                tracing::error!(reason = why, %error, "reload refused: the configuration could not be read");
                self.reloads.send_modify(|c| c.refused += 1);
                return false;
            }
        };
        let outcome = match loaded {
            Ok(config) => self.apply(config, acceptors, tx).await,
            Err(e) => Err(StartError::Config(e)),
        };
        match outcome {
            Ok(summary) => {
                tracing::info!(reason = why, %summary, "configuration reloaded");
                self.reloads.send_modify(|c| c.applied += 1);
                true
            }
            Err(error) => {
                tracing::error!(reason = why, %error, "reload refused; the running configuration stays");
                self.reloads.send_modify(|c| c.refused += 1);
                false
            }
        }
    }

    /// Switches to `config`: everything that can fail happens before anything changes.
    async fn apply(
        &mut self,
        config: Config,
        acceptors: &mut BTreeMap<String, JoinHandle<()>>,
        tx: &mpsc::Sender<Accepted>,
    ) -> Result<String, StartError> {
        if config.admin.as_ref().map(|a| a.listen) != self.config.admin.as_ref().map(|a| a.listen) {
            tracing::warn!("a change of [admin] listen takes effect at the next restart");
        }
        // Prepare: the shared cache if it changed, listeners for new or moved upstreams, then
        // the upstreams themselves.
        let cache = match same_shared_cache(
            self.config.shared_cache.as_ref(),
            config.shared_cache.as_ref(),
        ) {
            true => self.cache.clone(),
            false => self
                .cache
                .with_shared(shared_cache(&config, &self.metrics)?),
        };
        let mut prepared = Vec::new();
        for u in &config.upstreams {
            let old = self.slots.get(&u.name);
            let listener = match old {
                Some(slot) if slot.config.listen == u.listen => None,
                _ => Some(bind(&format!("upstream `{}`", u.name), u.listen).await?),
            };
            let addr = match (&listener, old) {
                (Some(l), _) => local_addr(l, u.listen)?,
                (None, Some(slot)) => slot.addr,
                (None, None) => u.listen,
            };
            let (upstream, client) = self.build(&cache, u, addr, old)?;
            prepared.push((u.clone(), upstream, client, listener, addr));
        }
        // Commit.
        let mut added = 0;
        let mut changed = 0;
        let names: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
        for (u, upstream, client, listener, addr) in prepared {
            let name = u.name.clone();
            match self.slots.get_mut(&name) {
                Some(slot) => {
                    let successor = Arc::clone(&upstream.tokens);
                    let previous = slot.upstream.swap(Arc::new(upstream));
                    if !Arc::ptr_eq(&previous.tokens, &successor) {
                        previous.tokens.retire(Some(&successor));
                        successor.start();
                    }
                    slot.config = u;
                    slot.client = client;
                    if let Some(listener) = listener {
                        tracing::info!(upstream = name.as_str(), from = %slot.addr, to = %addr, "listener moved");
                        slot.addr = addr;
                        let handle =
                            spawn_upstream_acceptor(listener, &slot.upstream, tx, &self.permits);
                        if let Some(old) = acceptors.insert(name, handle) {
                            close(old).await;
                        }
                    }
                    changed += 1;
                }
                None => {
                    upstream.tokens.start();
                    let slot = Slot {
                        upstream: Arc::new(ArcSwap::from_pointee(upstream)),
                        config: u,
                        client,
                        addr,
                        listener: None,
                    };
                    if let Some(listener) = listener {
                        tracing::info!(upstream = name.as_str(), %addr, "listening");
                        let handle =
                            spawn_upstream_acceptor(listener, &slot.upstream, tx, &self.permits);
                        acceptors.insert(name.clone(), handle);
                    }
                    self.slots.insert(name, slot);
                    added += 1;
                }
            }
        }
        let removed: Vec<String> = self
            .slots
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in &removed {
            if let Some(slot) = self.slots.remove(name) {
                let last = slot.upstream.load();
                last.tokens.retire(None);
                // Its open keep-alive connections must not go on using removed credentials.
                last.remove();
                self.metrics.forget(name);
            }
            if let Some(acceptor) = acceptors.remove(name) {
                close(acceptor).await;
            }
            tracing::info!(
                upstream = name.as_str(),
                "upstream removed; its listener is closed"
            );
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        self.config = config;
        self.cache = cache;
        self.publish();
        Ok(format!(
            "{changed} kept, {added} added, {} removed",
            removed.len()
        ))
    }
}

/// Compares the `{ file = … }` secrets in use with their files every [`SECRET_POLL`] and names
/// the first that changed. It says so once per new content: a reload that is refused is not
/// retried until the files change again, and a new configuration (a new `in_use`) starts over.
pub(super) async fn watch_secret_files(
    mut in_use: watch::Receiver<Vec<LoadedSecret>>,
    changed: mpsc::Sender<PathBuf>,
) {
    let mut tick = tokio::time::interval(SECRET_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Option<Vec<Option<Secret>>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Ok(()) = in_use.changed() => {
                reported = None;
                continue;
            }
        }
        let secrets = in_use.borrow_and_update().clone();
        let Ok((first, contents)) = tokio::task::spawn_blocking(move || read_files(&secrets)).await
        else {
            continue;
        };
        let Some(path) = first else { continue };
        if reported.as_ref() != Some(&contents) {
            if changed.send(path).await.is_err() {
                return;
            }
            reported = Some(contents);
        }
    }
}

/// What each secret file holds now (unreadable ones as `None`), and the first that differs from
/// the value in use. A file briefly missing mid-swap is not a change yet.
fn read_files(secrets: &[LoadedSecret]) -> (Option<PathBuf>, Vec<Option<Secret>>) {
    let contents: Vec<Option<Secret>> = secrets.iter().map(|s| s.source.resolve().ok()).collect();
    let first = secrets
        .iter()
        .zip(&contents)
        .find(|(s, now)| now.as_ref().is_some_and(|v| *v != s.value))
        .and_then(|(s, _)| s.source.file().map(PathBuf::from));
    (first, contents)
}
