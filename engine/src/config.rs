//! The original's configuration file, shared by the agent and the apiserver as it was by the
//! original's two components: file, then `DHCP_` environment, then command line, plus our keys.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::dhcp::MacAddr;
use crate::error::Error;

pub const DEFAULT_CONFIG_FILE: &str = "/etc/dhcpmanager/dhcpmanager.toml";
pub const ORIGINAL_ETCD_PREFIX: &str = "/kramergroup.science/dhcp-address-space-endpoint/";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    pub etcd: Vec<String>,
    pub interface: String,
    pub manage_interfaces: bool,
    pub assign_interfaces: bool,
    pub macs: Vec<MacAddr>,
    pub port: u16,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub dial_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub client_timeout: Duration,
    #[serde(deserialize_with = "cidrs")]
    pub cidrs: Vec<String>,
    pub auth_token: Option<String>,
    pub standalone: bool,
    pub state_dir: PathBuf,
    pub etcd_prefix: String,
    pub max_body_bytes: usize,
    pub bind: IpAddr,
    /// Standalone: macvlans kept ready on free MACs so a POST skips link creation.
    pub spare_links: usize,
    /// Standalone: new DHCP transmissions per second toward the server, all addresses together
    /// (the agent's `--rate`).
    pub dhcp_rate: u32,
    /// Standalone: transmissions that may go out at once before `dhcp-rate` applies.
    pub dhcp_burst: u32,
    /// POST /v1/ip answered per second, all clients together (0: no limit): how fast a
    /// misconfigured client (a MetalLB fork without `cidrs`) can take MACs from the pool.
    pub allocate_rate: u32,
    /// POSTs that may come at once before `allocate-rate` applies.
    pub allocate_burst: u32,
    /// Standalone: addresses whose IP is not assigned run without a macvlan, over one shared
    /// socket on the parent (docs/engine.md); false: a macvlan per address, as the original.
    pub linkless: bool,
    /// Standalone: addresses held at most; more are refused with 503.
    pub max_addresses: usize,
    /// Standalone: addresses on macvlans of the parent at most; 0: half of the kernel's
    /// `net.core.netdev_max_backlog`.
    pub links_per_parent: usize,
    /// Standalone: the connection-mark bits of announced addresses (the agent's
    /// `--reply-mark-mask`, see [`crate::net::reply_mark`]).
    pub reply_mark_mask: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            etcd: vec!["etcd:2379".into()],
            interface: "eth0".into(),
            manage_interfaces: true,
            assign_interfaces: false,
            macs: Vec::new(),
            port: 8000,
            request_timeout: Duration::from_secs(10),
            dial_timeout: Duration::from_secs(5),
            client_timeout: Duration::from_secs(5),
            cidrs: vec!["192.168.0.0/16".into()],
            auth_token: None,
            standalone: false,
            state_dir: PathBuf::from("/var/lib/dhcpmanager"),
            etcd_prefix: ORIGINAL_ETCD_PREFIX.into(),
            max_body_bytes: 64 * 1024,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            spare_links: 4,
            dhcp_rate: 500,
            dhcp_burst: 100,
            allocate_rate: 20,
            allocate_burst: 40,
            linkless: true,
            max_addresses: crate::manager::DEFAULT_MAX_ADDRESSES,
            links_per_parent: 0,
            reply_mark_mask: crate::net::reply_mark::DEFAULT_MARK_MASK,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    List,
    Bool,
    Integer,
}

/// Every key with the kind its environment value is read as.
const KEYS: &[(&str, Kind)] = &[
    ("etcd", Kind::List),
    ("interface", Kind::Text),
    ("manage-interfaces", Kind::Bool),
    ("assign-interfaces", Kind::Bool),
    ("macs", Kind::List),
    ("port", Kind::Integer),
    ("request-timeout", Kind::Text),
    ("dial-timeout", Kind::Text),
    ("client-timeout", Kind::Text),
    ("cidrs", Kind::List),
    ("auth-token", Kind::Text),
    ("standalone", Kind::Bool),
    ("state-dir", Kind::Text),
    ("etcd-prefix", Kind::Text),
    ("max-body-bytes", Kind::Integer),
    ("bind", Kind::Text),
    ("spare-links", Kind::Integer),
    ("dhcp-rate", Kind::Integer),
    ("dhcp-burst", Kind::Integer),
    ("allocate-rate", Kind::Integer),
    ("allocate-burst", Kind::Integer),
    ("linkless", Kind::Bool),
    ("max-addresses", Kind::Integer),
    ("links-per-parent", Kind::Integer),
    ("reply-mark-mask", Kind::Integer),
];

/// Where the file comes from: the default path may be missing, an explicit one may not.
pub enum Source<'a> {
    Default,
    Explicit(&'a Path),
}

impl Config {
    /// File, then `DHCP_` environment (both `DHCP_MANAGE_INTERFACES` and the original's
    /// `DHCP_MANAGE-INTERFACES`), then command-line overrides given as raw strings per key.
    pub fn load(
        source: Source<'_>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &[(&str, String)],
    ) -> Result<Config, Error> {
        let (path, text) = match source {
            Source::Default => match std::fs::read_to_string(DEFAULT_CONFIG_FILE) {
                Ok(text) => (PathBuf::from(DEFAULT_CONFIG_FILE), text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (PathBuf::from(DEFAULT_CONFIG_FILE), String::new())
                }
                Err(e) => return Err(Error::ConfigRead(DEFAULT_CONFIG_FILE.into(), e)),
            },
            Source::Explicit(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::ConfigRead(path.to_path_buf(), e))?;
                (path.to_path_buf(), text)
            }
        };
        let invalid_file =
            |e: toml::de::Error| Error::ConfigInvalid(path.display().to_string(), e.to_string());
        // The file alone first, so its errors point at its own lines.
        toml::from_str::<Config>(&text).map_err(invalid_file)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(invalid_file)?;
        for (key, value) in env_overrides(env)? {
            table.insert(key.to_string(), value);
        }
        for (key, raw) in cli {
            let kind = kind_of(key).ok_or_else(|| {
                Error::ConfigInvalid("command line".into(), format!("unknown key {key}"))
            })?;
            let value = parse_raw(kind, raw)
                .map_err(|problem| Error::ConfigInvalid(format!("--{key}"), problem))?;
            table.insert(key.to_string(), value);
        }
        Self::from_table(table, &path)
    }

    /// Re-parse the merged table as text so that serde errors point at the offending `key = value`.
    fn from_table(table: toml::Table, path: &Path) -> Result<Config, Error> {
        let merged = toml::to_string(&table)
            .map_err(|e| Error::ConfigInvalid(path.display().to_string(), e.to_string()))?;
        let config: Config = toml::from_str(&merged).map_err(|e| {
            Error::ConfigInvalid(
                format!("{} (after environment and flags)", path.display()),
                e.to_string(),
            )
        })?;
        config.validate()
    }

    fn validate(self) -> Result<Config, Error> {
        let invalid = |key: &str, problem: &str| {
            Err(Error::ConfigInvalid(
                "configuration".into(),
                format!("{key}: {problem}"),
            ))
        };
        if self.request_timeout.is_zero() {
            return invalid("request-timeout", "must be greater than zero");
        }
        if self.max_body_bytes == 0 {
            return invalid("max-body-bytes", "must be greater than zero");
        }
        if self.dhcp_rate == 0 {
            return invalid("dhcp-rate", "must be greater than zero");
        }
        if self.dhcp_burst == 0 {
            return invalid("dhcp-burst", "must be greater than zero");
        }
        if let Some(mac) = self.macs.iter().find(|mac| !mac.is_usable_source()) {
            return invalid(
                "macs",
                &format!("{mac} is all-zero, broadcast or multicast: no host may send from it"),
            );
        }
        if self.allocate_rate > 0 && self.allocate_burst == 0 {
            return invalid(
                "allocate-burst",
                "must be greater than zero (allocate-rate = 0 turns the limit off)",
            );
        }
        if self.auth_token.as_deref() == Some("") {
            return invalid(
                "auth-token",
                "must not be empty (leave it out to disable auth)",
            );
        }
        if self.reply_mark_mask == 0 {
            return invalid("reply-mark-mask", "needs at least one bit");
        }
        if !self.etcd_prefix.starts_with('/') || !self.etcd_prefix.ends_with('/') {
            return invalid("etcd-prefix", "must start and end with '/'");
        }
        Ok(self)
    }
}

fn kind_of(key: &str) -> Option<Kind> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, kind)| *kind)
}

/// Known keys only: other `DHCP_*` variables (e.g. Kubernetes service links of a Service named
/// `dhcp`) are none of our business. When both spellings are set, the sorted-last name wins
/// (`DHCP_MANAGE_INTERFACES` over `DHCP_MANAGE-INTERFACES`), so the outcome never depends on
/// the environment's order.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(&'static str, toml::Value)>, Error> {
    let mut found = Vec::new();
    for (name, raw) in env {
        let Some(suffix) = name.strip_prefix("DHCP_") else {
            continue;
        };
        let wanted = suffix.to_ascii_lowercase().replace('_', "-");
        let Some((key, kind)) = KEYS.iter().find(|(k, _)| *k == wanted) else {
            continue;
        };
        let value = parse_raw(*kind, &raw).map_err(|problem| {
            Error::ConfigInvalid(format!("environment variable {name}"), problem)
        })?;
        found.push((name, *key, value));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found
        .into_iter()
        .map(|(_, key, value)| (key, value))
        .collect())
}

fn parse_raw(kind: Kind, raw: &str) -> Result<toml::Value, String> {
    let raw = raw.trim();
    match kind {
        Kind::Text => Ok(toml::Value::String(raw.to_string())),
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(toml::Value::Boolean(true)),
            "false" | "0" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("{raw:?} is not a boolean (true/false)")),
        },
        Kind::Integer => raw
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not an integer")),
        Kind::List if raw.starts_with('[') => {
            #[derive(Deserialize)]
            struct Wrapper {
                v: toml::value::Array,
            }
            toml::from_str::<Wrapper>(&format!("v = {raw}"))
                .map(|w| toml::Value::Array(w.v))
                .map_err(|e| format!("{raw:?} is not a TOML array: {}", e.message()))
        }
        Kind::List => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_string()))
                .collect(),
        )),
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration like \"10s\": {e}"))
    })
}

fn cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(deserializer)?;
    for cidr in &list {
        parse_cidr(cidr).map_err(serde::de::Error::custom)?;
    }
    Ok(list)
}

pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{text:?} is not an IPv4 CIDR like \"192.168.0.0/16\"");
    let (address, length) = text.split_once('/').ok_or_else(bad)?;
    let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
    let length: u8 = length.parse().map_err(|_| bad())?;
    if length > 32 {
        return Err(bad());
    }
    Ok((address, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as an explicit file that exists only for the duration of the call.
    fn load(text: &str, env: &[(&str, &str)], cli: &[(&str, String)]) -> Result<Config, Error> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "dhcpmanager-config-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let loaded = Config::load(Source::Explicit(&path), env, cli);
        std::fs::remove_file(&path).unwrap();
        loaded
    }

    #[test]
    fn empty_file_gives_the_original_defaults() {
        let config = load("", &[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.etcd, vec!["etcd:2379"]);
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert_eq!(config.port, 8000);
        assert_eq!(config.cidrs, vec!["192.168.0.0/16"]);
        assert_eq!(config.etcd_prefix, ORIGINAL_ETCD_PREFIX);
    }

    #[test]
    fn readme_example_file_parses() {
        let config = load(
            "etcd = [ \"etcd:2379\" ]\ninterface = \"eth0\"\nmanage-interfaces = true\n\
             assign-interfaces = false\nmacs = [\n  \"56:6A:E2:0B:01:8D\",\n  \"30:BA:33:C2:E3:C2\",\n]\n\
             request-timeout = \"2s\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(config.macs.len(), 2);
        assert_eq!(config.macs[0].to_string(), "56:6a:e2:0b:01:8d");
        assert_eq!(config.request_timeout, Duration::from_secs(2));
    }

    #[test]
    fn the_reply_mark_mask_is_hex_in_the_file_decimal_in_the_environment_and_never_zero() {
        assert_eq!(load("", &[], &[]).unwrap().reply_mark_mask, 0x7e);
        let config = load("reply-mark-mask = 0xff000000\n", &[], &[]).unwrap();
        assert_eq!(config.reply_mark_mask, 0xff00_0000);
        let config = load("", &[("DHCP_REPLY_MARK_MASK", "3840")], &[]).unwrap();
        assert_eq!(config.reply_mark_mask, 0xf00);
        for text in ["reply-mark-mask = 0\n", "reply-mark-mask = 0x1ffffffff\n"] {
            let error = load(text, &[], &[]).unwrap_err().to_string();
            assert!(error.contains("reply-mark-mask"), "{error}");
        }
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let missing = Path::new("/nonexistent/dhcpmanager.toml");
        let error = Config::load(Source::Explicit(missing), Vec::new(), &[]).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/dhcpmanager.toml"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_and_bad_values_name_the_key() {
        let error = load("etcd-endpoints = []\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("etcd-endpoints"), "{error}");
        let error = load("request-timeout = \"soon\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("request-timeout"), "{error}");
        let error = load("port = 70000\n", &[], &[]).unwrap_err().to_string();
        assert!(error.contains("port"), "{error}");
        let error = load("cidrs = [\"10.0.0.0/33\"]\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("cidrs"), "{error}");
        let error = load("", &[("DHCP_MANAGE_INTERFACES", "maybe")], &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("DHCP_MANAGE_INTERFACES"), "{error}");
    }

    #[test]
    fn environment_overrides_file_in_both_spellings() {
        let config = load(
            "manage-interfaces = true\nport = 1\n",
            &[
                ("DHCP_MANAGE_INTERFACES", "false"),
                ("DHCP_ASSIGN-INTERFACES", "true"),
                ("DHCP_PORT", "9000"),
                ("DHCP_REQUEST_TIMEOUT", "3s"),
                ("DHCP_ETCD", "a:2379, b:2379"),
                ("DHCP_CIDRS", "[\"10.77.0.0/24\", \"10.78.0.0/24\"]"),
                ("DHCP_UNRELATED_SERVICE_HOST", "10.0.0.1"),
            ],
            &[],
        )
        .unwrap();
        assert!(!config.manage_interfaces);
        assert!(config.assign_interfaces);
        assert_eq!(config.port, 9000);
        assert_eq!(config.request_timeout, Duration::from_secs(3));
        assert_eq!(config.etcd, vec!["a:2379", "b:2379"]);
        assert_eq!(config.cidrs, vec!["10.77.0.0/24", "10.78.0.0/24"]);
    }

    #[test]
    fn command_line_overrides_environment() {
        let config = load(
            "",
            &[("DHCP_PORT", "9000")],
            &[("port", "9100".into()), ("auth-token", "s3cret".into())],
        )
        .unwrap();
        assert_eq!(config.port, 9100);
        assert_eq!(config.auth_token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn spare_links_from_file_environment_and_flag() {
        assert_eq!(load("", &[], &[]).unwrap().spare_links, 4);
        assert_eq!(load("spare-links = 0\n", &[], &[]).unwrap().spare_links, 0);
        let config = load("spare-links = 1\n", &[("DHCP_SPARE-LINKS", "8")], &[]).unwrap();
        assert_eq!(config.spare_links, 8);
        let config = load(
            "",
            &[("DHCP_SPARE_LINKS", "8")],
            &[("spare-links", "2".into())],
        );
        assert_eq!(config.unwrap().spare_links, 2);
        let error = load("spare-links = -1\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("spare-links"), "{error}");
    }

    #[test]
    fn dhcp_rate_and_burst_default_to_the_agents_and_refuse_zero() {
        let config = load("", &[], &[]).unwrap();
        assert_eq!((config.dhcp_rate, config.dhcp_burst), (500, 100));
        let config = load("dhcp-rate = 2000\n", &[("DHCP_DHCP_BURST", "400")], &[]).unwrap();
        assert_eq!((config.dhcp_rate, config.dhcp_burst), (2000, 400));
        for (bad, key) in [
            ("dhcp-rate = 0\n", "dhcp-rate"),
            ("dhcp-burst = 0\n", "dhcp-burst"),
        ] {
            let error = load(bad, &[], &[]).unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn unusable_pool_macs_are_refused_by_name() {
        for bad in [
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
        ] {
            let error = load(
                &format!("macs = [\"02:00:00:00:00:01\", \"{bad}\"]\n"),
                &[],
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(error.contains(bad) && error.contains("macs"), "{error}");
        }
    }

    #[test]
    fn allocate_rate_limits_by_default_and_zero_turns_it_off() {
        let config = load("", &[], &[]).unwrap();
        assert_eq!((config.allocate_rate, config.allocate_burst), (20, 40));
        let config = load("allocate-rate = 0\n", &[], &[]).unwrap();
        assert_eq!(config.allocate_rate, 0);
        let error = load("allocate-burst = 0\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("allocate-burst"), "{error}");
    }

    #[test]
    fn empty_etcd_list_disables_the_mirror() {
        let config = load("etcd = []\n", &[], &[]).unwrap();
        assert!(config.etcd.is_empty());
    }

    /// The field names serde reads for `T` (after `rename_all`), captured from the one call a
    /// derived `Deserialize` of a struct makes, so a test can compare them with other lists.
    fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        use serde::de::{Error as _, Visitor, value::Error as ValueError};
        struct Capture(Option<&'static [&'static str]>);
        impl<'de> Deserializer<'de> for &mut Capture {
            type Error = ValueError;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ValueError> {
                Err(ValueError::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, ValueError> {
                self.0 = Some(fields);
                Err(ValueError::custom("captured"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut capture = Capture(None);
        let _ = T::deserialize(&mut capture);
        capture.0.expect("a struct")
    }

    #[test]
    fn the_key_list_covers_every_field_of_the_config_and_nothing_else() {
        let mut fields: Vec<&str> = field_names::<Config>().to_vec();
        let mut keys: Vec<&str> = KEYS.iter().map(|(key, _)| *key).collect();
        fields.sort_unstable();
        keys.sort_unstable();
        // A field missing from KEYS could be set in the file but not through DHCP_* or a flag.
        assert_eq!(keys, fields);
    }

    #[test]
    fn every_key_has_both_environment_spellings() {
        for (key, kind) in KEYS {
            let raw = match kind {
                Kind::Text | Kind::List => "x",
                Kind::Bool => "true",
                Kind::Integer => "1",
            };
            let upper = key.to_ascii_uppercase();
            for name in [
                format!("DHCP_{}", upper.replace('-', "_")),
                format!("DHCP_{upper}"),
            ] {
                let found = env_overrides([(name.clone(), raw.to_string())]).unwrap();
                assert_eq!(
                    found.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
                    vec![*key],
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn every_key_is_documented() {
        let documented = include_str!("../../docs/configuration.md");
        for (key, _) in KEYS {
            assert!(
                documented.contains(&format!("`{key}`")),
                "{key} is missing from docs/configuration.md"
            );
        }
    }
}
