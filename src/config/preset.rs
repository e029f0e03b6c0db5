//! Presets: what each known API's public documentation fixes (hosts, token endpoint, grant, client
//! authentication; see the README's "The five token APIs"), filled into an upstream's settings.
//!
//! A preset only fills what the file leaves out; anything written explicitly wins. It knows
//! hosts and paths, never credentials.

use std::ops::Range;

use super::raw::{ClientAuth, Field, FlowKind, Preset, RawAuth};
use super::suggest::did_you_mean;

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

/// Why a preset cannot fill an upstream, by the key the problem is reported at.
#[derive(Debug, PartialEq, Eq)]
pub enum PresetError {
    /// `environment` is unknown or not wanted (at `environment`), or missing (at `preset`).
    Environment(String),
    /// Nexudus has no fixed host: it needs `target` (at `preset`).
    NeedsTarget(String),
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

    /// The flow this preset's API uses, whatever the environment.
    pub fn flow(self) -> FlowKind {
        match self {
            Preset::NuvyNexus | Preset::Nuvy | Preset::Quantoz => FlowKind::ClientCredentials,
            Preset::Nexudus => FlowKind::Password,
            Preset::Nexushub => FlowKind::Nexushub,
        }
    }

    /// Checks `environment` against the ones this preset knows.
    fn check_environment(self, environment: Option<&str>) -> Result<(), PresetError> {
        let envs = self.environments();
        let message = match (environment, envs.is_empty()) {
            (Some(e), true) => format!(
                "preset `{}` has no environments; remove `environment = {e:?}`",
                self.name()
            ),
            (None, false) => format!(
                "preset `{}` needs `environment`, one of: {}",
                self.name(),
                envs.join(", ")
            ),
            (Some(e), false) if !envs.contains(&e) => {
                let hint = match did_you_mean(e, envs.iter().copied()) {
                    Some(near) => format!("did you mean `{near}`? "),
                    None => String::new(),
                };
                format!(
                    "unknown environment {e:?} for preset `{}`; {hint}expected one of: {}",
                    self.name(),
                    envs.join(", ")
                )
            }
            _ => return Ok(()),
        };
        Err(PresetError::Environment(message))
    }

    /// Resolves the preset for `environment`; `target` is the explicit target, which Nexudus
    /// needs to derive its token URL.
    pub fn defaults(
        self,
        environment: Option<&str>,
        target: Option<&str>,
    ) -> Result<Defaults, PresetError> {
        self.check_environment(environment)?;
        let nuvy_host = match environment {
            Some("production") => "https://prd.api.nuvy.ai",
            _ => "https://qa.api.nuvy.ai",
        };
        Ok(match self {
            Preset::NuvyNexus => Defaults {
                target: Some(nuvy_host.into()),
                flow: self.flow(),
                token_url: Some(format!("{nuvy_host}/nexus/oauth2/token")),
                auth_url: None,
                client_auth: Some(ClientAuth::Basic),
                scope: None,
            },
            Preset::Nuvy => Defaults {
                target: Some(nuvy_host.into()),
                flow: self.flow(),
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
                    flow: self.flow(),
                    token_url: Some(format!("https://{identity}/connect/token")),
                    auth_url: None,
                    client_auth: Some(ClientAuth::Body),
                    scope: Some("api1"),
                }
            }
            Preset::Nexudus => {
                let Some(target) = target else {
                    return Err(PresetError::NeedsTarget("preset `nexudus` needs `target`, your space's portal URL such as \"https://example.spaces.nexudus.com\"".into()));
                };
                Defaults {
                    target: None,
                    flow: self.flow(),
                    token_url: Some(format!("{}/api/token", target.trim_end_matches('/'))),
                    auth_url: None,
                    client_auth: None,
                    scope: None,
                }
            }
            Preset::Nexushub => Defaults {
                target: None,
                flow: self.flow(),
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
    target: &mut Option<Field<String>>,
    auth: &mut RawAuth,
    at: Range<usize>,
) {
    let supplied = |v: String| Field::new(at.clone(), v);
    if target.is_none() {
        *target = defaults.target.map(supplied);
    }
    if auth.flow.is_none() {
        auth.flow = Some(Field::new(at.clone(), defaults.flow));
    }
    if auth.token_url.is_none() {
        auth.token_url = defaults.token_url.map(supplied);
    }
    if auth.auth_url.is_none() {
        auth.auth_url = defaults.auth_url.map(supplied);
    }
    if auth.client_auth.is_none() {
        auth.client_auth = defaults.client_auth.map(|c| Field::new(at.clone(), c));
    }
    if auth.scope.is_none() {
        auth.scope = defaults.scope.map(|s| supplied(s.into()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn environment_error(result: Result<Defaults, PresetError>) -> String {
        match result {
            Err(PresetError::Environment(message)) => message,
            other => panic!("expected an environment error: {other:?}"),
        }
    }

    #[test]
    fn environments_are_checked() {
        let err = environment_error(Preset::NuvyNexus.defaults(None, None));
        assert!(err.contains("qa, production"), "{err}");
        let err = environment_error(Preset::Quantoz.defaults(Some("qa"), None));
        assert!(err.contains("test, production"), "{err}");
        assert!(!err.contains("did you mean"), "{err}");
        let err = environment_error(Preset::Nexushub.defaults(Some("qa"), None));
        assert!(err.contains("no environments"), "{err}");
        let err = environment_error(Preset::Nuvy.defaults(Some("prod"), None));
        assert!(err.contains("did you mean `production`?"), "{err}");
        let err = environment_error(Preset::Quantoz.defaults(Some("tset"), None));
        assert!(err.contains("did you mean `test`?"), "{err}");
    }

    #[test]
    fn every_preset_names_its_flow() {
        for preset in [Preset::NuvyNexus, Preset::Nuvy, Preset::Quantoz] {
            let env = preset.environments()[0];
            assert_eq!(
                preset.defaults(Some(env), None).unwrap().flow,
                preset.flow()
            );
        }
        let d = Preset::Nexudus.defaults(None, Some("https://x")).unwrap();
        assert_eq!(d.flow, FlowKind::Password);
        assert_eq!(
            Preset::Nexushub.defaults(None, None).unwrap().flow,
            FlowKind::Nexushub
        );
        assert!(matches!(
            Preset::Nexudus.defaults(None, None),
            Err(PresetError::NeedsTarget(_))
        ));
    }

    #[test]
    fn presets_fill_the_documented_values() {
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
        let mut target = Some(Field::new(0..1, "https://mine".to_string()));
        let mut auth = RawAuth {
            scope: Some(Field::new(0..1, "mine".into())),
            ..RawAuth::default()
        };
        let d = Preset::Quantoz.defaults(Some("test"), None).unwrap();
        fill(d, &mut target, &mut auth, 0..1);
        assert_eq!(target.unwrap().get().unwrap(), "https://mine");
        assert_eq!(
            auth.scope.and_then(Field::into_value).as_deref(),
            Some("mine")
        );
        assert_eq!(
            auth.client_auth.and_then(Field::into_value),
            Some(ClientAuth::Body)
        );
    }
}
