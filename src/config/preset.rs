//! Presets: what the seed pages fix for each known API, filled into an upstream's settings.
//!
//! A preset only fills what the file leaves out; anything written explicitly wins. It knows
//! hosts and paths, never credentials.

use std::ops::Range;

use toml::Spanned;

use super::raw::{ClientAuth, FlowKind, Preset, RawAuth};

/// What a preset contributes to an upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct Defaults {
    pub target: Option<String>,
    pub flow: FlowKind,
    pub token_url: Option<String>,
    pub auth_url: Option<String>,
    pub client_auth: Option<ClientAuth>,
    pub scope: Option<&'static str>,
}

impl Preset {
    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Preset::NuvyNexus => "nuvy-nexus",
            Preset::Nuvy => "nuvy",
            Preset::Quantoz => "quantoz",
            Preset::Nexudus => "nexudus",
            Preset::Nexushub => "nexushub",
        }
    }

    /// The environments this preset knows, as accepted by `environment`.
    pub fn environments(self) -> &'static [&'static str] {
        match self {
            Preset::NuvyNexus | Preset::Nuvy => &["qa", "production"],
            Preset::Quantoz => &["test", "production"],
            Preset::Nexudus | Preset::Nexushub => &[],
        }
    }

    /// Resolves the preset for `environment`; `target` is the explicit target, which Nexudus
    /// needs to derive its token URL.
    pub fn defaults(
        self,
        environment: Option<&str>,
        target: Option<&str>,
    ) -> Result<Defaults, String> {
        let envs = self.environments();
        match (environment, envs.is_empty()) {
            (Some(e), true) => {
                return Err(format!(
                    "preset `{}` has no environments; remove `environment = {e:?}`",
                    self.name()
                ))
            }
            (None, false) => {
                return Err(format!(
                    "preset `{}` needs `environment`, one of: {}",
                    self.name(),
                    envs.join(", ")
                ))
            }
            (Some(e), false) if !envs.contains(&e) => {
                return Err(format!(
                    "unknown environment {e:?} for preset `{}`; expected one of: {}",
                    self.name(),
                    envs.join(", ")
                ))
            }
            _ => {}
        }
        let nuvy_host = match environment {
            Some("production") => "https://prd.api.nuvy.ai",
            _ => "https://qa.api.nuvy.ai",
        };
        Ok(match self {
            Preset::NuvyNexus => Defaults {
                target: Some(nuvy_host.into()),
                flow: FlowKind::ClientCredentials,
                token_url: Some(format!("{nuvy_host}/nexus/oauth2/token")),
                auth_url: None,
                client_auth: Some(ClientAuth::Basic),
                scope: None,
            },
            Preset::Nuvy => Defaults {
                target: Some(nuvy_host.into()),
                flow: FlowKind::ClientCredentials,
                token_url: Some(format!("{nuvy_host}/oauth2/token")),
                auth_url: None,
                client_auth: Some(ClientAuth::Basic),
                scope: None,
            },
            Preset::Quantoz => {
                let (api, identity) = match environment {
                    Some("production") => ("api.quantoz.com", "identity.quantoz.com"),
                    _ => ("testapi.quantoz.com", "testidentity.quantoz.com"),
                };
                Defaults {
                    target: Some(format!("https://{api}")),
                    flow: FlowKind::ClientCredentials,
                    token_url: Some(format!("https://{identity}/connect/token")),
                    auth_url: None,
                    client_auth: Some(ClientAuth::Body),
                    scope: Some("api1"),
                }
            }
            Preset::Nexudus => {
                let Some(target) = target else {
                    return Err("preset `nexudus` needs `target`, your space's portal URL such as \"https://example.spaces.nexudus.com\"".into());
                };
                Defaults {
                    target: None,
                    flow: FlowKind::Password,
                    token_url: Some(format!("{}/api/token", target.trim_end_matches('/'))),
                    auth_url: None,
                    client_auth: None,
                    scope: None,
                }
            }
            Preset::Nexushub => Defaults {
                target: None,
                flow: FlowKind::Nexushub,
                token_url: None,
                auth_url: Some("https://auth.nexushub.co".into()),
                client_auth: None,
                scope: None,
            },
        })
    }
}

/// Fills `auth` and `target` from `defaults` where they are not written. `at` is the span used
/// for values the preset supplies (the upstream table), so errors in them point somewhere.
pub fn fill(
    defaults: Defaults,
    target: &mut Option<Spanned<String>>,
    auth: &mut RawAuth,
    at: Range<usize>,
) {
    let spanned = |v: String| Spanned::new(at.clone(), v);
    if target.is_none() {
        *target = defaults.target.map(spanned);
    }
    auth.flow.get_or_insert(defaults.flow);
    if auth.token_url.is_none() {
        auth.token_url = defaults.token_url.map(spanned);
    }
    if auth.auth_url.is_none() {
        auth.auth_url = defaults.auth_url.map(spanned);
    }
    if auth.client_auth.is_none() {
        auth.client_auth = defaults.client_auth.map(|c| Spanned::new(at.clone(), c));
    }
    if auth.scope.is_none() {
        auth.scope = defaults.scope.map(|s| spanned(s.into()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn environments_are_checked() {
        let err = Preset::NuvyNexus.defaults(None, None).unwrap_err();
        assert!(err.contains("qa, production"), "{err}");
        let err = Preset::Quantoz.defaults(Some("qa"), None).unwrap_err();
        assert!(err.contains("test, production"), "{err}");
        let err = Preset::Nexushub.defaults(Some("qa"), None).unwrap_err();
        assert!(err.contains("no environments"), "{err}");
    }

    #[test]
    fn presets_fill_the_seed_values() {
        let d = Preset::NuvyNexus
            .defaults(Some("production"), None)
            .unwrap();
        assert_eq!(
            d.token_url.unwrap(),
            "https://prd.api.nuvy.ai/nexus/oauth2/token"
        );
        let d = Preset::Nuvy.defaults(Some("qa"), None).unwrap();
        assert_eq!(d.token_url.unwrap(), "https://qa.api.nuvy.ai/oauth2/token");
        let d = Preset::Quantoz.defaults(Some("test"), None).unwrap();
        assert_eq!(d.target.unwrap(), "https://testapi.quantoz.com");
        assert_eq!(
            d.token_url.unwrap(),
            "https://testidentity.quantoz.com/connect/token"
        );
        assert_eq!(
            (d.client_auth, d.scope),
            (Some(ClientAuth::Body), Some("api1"))
        );
        let d = Preset::Nexudus
            .defaults(None, Some("https://x.spaces.nexudus.com/"))
            .unwrap();
        assert_eq!(
            d.token_url.unwrap(),
            "https://x.spaces.nexudus.com/api/token"
        );
        assert!(Preset::Nexudus.defaults(None, None).is_err());
    }

    #[test]
    fn explicit_values_win() {
        let mut target = Some(Spanned::new(0..1, "https://mine".to_string()));
        let mut auth = RawAuth {
            scope: Some(Spanned::new(0..1, "mine".into())),
            ..RawAuth::default()
        };
        let d = Preset::Quantoz.defaults(Some("test"), None).unwrap();
        fill(d, &mut target, &mut auth, 0..1);
        assert_eq!(target.unwrap().into_inner(), "https://mine");
        assert_eq!(auth.scope.map(Spanned::into_inner).as_deref(), Some("mine"));
        assert_eq!(
            auth.client_auth.map(Spanned::into_inner),
            Some(ClientAuth::Body)
        );
    }
}
